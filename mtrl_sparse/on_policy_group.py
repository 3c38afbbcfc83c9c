"""PPO runs that differ only in seed and target sparsity, as one vmapped program (a
``RunGroup``, ``agent_kind.py``) on the JAX MiniGrid backend.

Each run keeps its own ``OnPolicyRun`` as its host-side record: its keys (split per rollout exactly
as a run alone splits them), its env object (the checkpoint format of its env state), its
config. The device state of all runs is stacked along a leading run axis: agent states, env
states, observations. One compiled call per rollout advances every run (``vmap`` of
``make_compiled_iteration``, with the update counters shared and unbatched, so method events stay
real branches; each run's target sparsity is array data in its method state); evaluation is the
vmapped compiled evaluation. Rows, probes and checkpoints are taken per run from its slice of the
stacked state, so each run directory holds what the same run executed alone writes (up to float
rounding of batched against unbatched arithmetic), and each run can be resumed alone.

Where several devices are present (and divide the number of runs), the run axis is sharded over
them: each device holds and computes its share of the runs, the update counters are replicated.

Memory: a run's device state is its agent state (params, masks and Adam moments of both networks)
plus its envs (2.3 kB each) and one rollout; K runs take K times that.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from mtrl_sparse.agent_kind import EpisodeTracker, Iteration
from mtrl_sparse.agents.ppo import PPOState
from mtrl_sparse.config import ConfigError, PPOTrainConfig
from mtrl_sparse.evaluation import make_compiled_normalized_return, normalized_return_row
from mtrl_sparse.mask_stats import NetworkMasks, split_runs, state_masks
from mtrl_sparse.on_policy import (
    OnPolicyRun,
    make_compiled_iteration,
    make_run_ppo,
    rollout_episode_steps,
)
from mtrl_sparse.run_axis import (
    check_same_program,
    replicated,
    run_axis_sharding,
    run_slice,
    stack_runs,
)
from mtrl_sparse.videos import Video

SHARED_FIELDS = ("actor_step", "critic_step", "phase")
"""``PPOState`` fields common to all runs of a group, kept out of the run axis (unbatched), so
that method events on the update counters stay real branches."""

def group_sparsities(config: PPOTrainConfig) -> dict[str, float]:
    """The target sparsity of each network of a run."""
    return {name: settings.sparsity for name, settings in config.network_methods().items()}


def check_group(configs: list[PPOTrainConfig]) -> None:
    """``ConfigError`` unless the PPO runs can share one program: the jax backend, and
    ``check_same_program``."""
    if configs[0].env.backend != "jax":
        raise ConfigError("vmapped PPO runs need the jax backend (--env.backend jax)")
    check_same_program(configs)


class VmappedOnPolicyRuns:
    """K PPO runs on the jax backend in one vmapped program (module docstring)."""

    score_name = "eval/normalized_return"
    array_labels: dict[str, tuple[str, ...]] = {}

    def __init__(self, configs: list[PPOTrainConfig]):
        check_group(configs)
        self.runs = [OnPolicyRun(config) for config in configs]
        first = self.runs[0]
        self.task_names, self.num_envs = first.task_names, first.num_envs
        self.budget_env_steps, self.layer_slices = first.budget_env_steps, first.layer_slices
        self.rollout_env_steps = first.rollout_env_steps
        self.actor_updates_per_rollout = first.actor_updates_per_rollout
        self.sparsities = {name: jnp.asarray([group_sparsities(r.config)[name] for r in self.runs],
                                             jnp.float32)
                           for name in group_sparsities(configs[0])}
        base, env = configs[0], first.env

        def init(key: jax.Array, sparsities: dict[str, jax.Array]) -> PPOState:
            return make_run_ppo(base, env, sparsities).init(key)

        # The method reads each run's target sparsity from its (batched) method state, so the
        # agent of the first run updates every run.
        axes = PPOState(actor=0, critic=0, **dict.fromkeys(SHARED_FIELDS))
        self._init = jax.jit(jax.vmap(init))
        self._iteration = jax.jit(jax.vmap(
            make_compiled_iteration(first.ppo, env.core, first.horizon),
            in_axes=(axes, 0, 0, 0, 0), out_axes=(axes, 0, 0, 0, 0, 0)), donate_argnums=0)
        env_cfg = base.env
        self._evaluate = jax.jit(jax.vmap(make_compiled_normalized_return(
            first.ppo.act_with, self.task_names, env_cfg.eval_episodes_per_task,
            env_cfg.eval_deterministic)))
        self._acting_weights = jax.jit(jax.vmap(first.ppo.acting_weights, in_axes=(axes,)))
        self._with_fixed_task = jax.jit(jax.vmap(env.core.with_fixed_task,
                                                 in_axes=(0, 0, None)))
        self.sharding = run_axis_sharding(len(configs))
        self.state: PPOState | None = None
        self.env_state: Any = None
        self.obs: jax.Array | None = None
        self.rollouts: Any = None
        self.metrics: dict[str, jax.Array] = {}
        self.compiled = False
        self.env_steps = 0

    def _place(self, tree: Any) -> Any:
        """``tree`` (leading run axis) split over the devices (``run_axis_sharding``)."""
        return tree if self.sharding is None else jax.device_put(tree, self.sharding)

    def _replicated(self, tree: Any) -> Any:
        """``tree`` whole on every device of the run axis (the shared fields)."""
        if self.sharding is None:
            return tree
        return jax.device_put(tree, replicated(self.sharding))

    def _set_state(self, state: PPOState) -> None:
        """The stacked agent state, its ``SHARED_FIELDS`` taken out of the run axis."""
        shared = {field: getattr(state, field)[0] for field in SHARED_FIELDS}
        state = self._place(state.replace(**dict.fromkeys(SHARED_FIELDS)))
        self.state = state.replace(**self._replicated(shared))

    def _stack_envs(self) -> None:
        """Stack the runs' env states (once, at start or restore; they stay stacked)."""
        env_states, obs = zip(*(run.env.device_state() for run in self.runs), strict=True)
        self.env_state, self.obs = self._place((stack_runs(env_states), jnp.stack(obs)))

    def start(self) -> None:
        keys = jnp.stack([run.init_key for run in self.runs])
        self._set_state(self._init(keys, self.sparsities))
        for run in self.runs:
            run.obs = run.env.reset()
        self._stack_envs()

    def abstract_states(self) -> list[Any]:
        return [run.abstract_state() for run in self.runs]

    def restore(self, saved: list[tuple[Any, dict[str, Any]]]) -> None:
        for run, (state, meta) in zip(self.runs, saved, strict=True):
            run.restore(state, meta)
        self._set_state(stack_runs([run.state for run in self.runs]))
        self._stack_envs()
        self.env_steps = self.runs[0].env_steps

    def iterate(self, episodes: list[EpisodeTracker]) -> Iteration:
        keys = []
        for run in self.runs:
            run.key, k_rollout, k_update, run.eval_key = jax.random.split(run.key, 4)
            keys.append((k_rollout, k_update))
        k_rollouts, k_updates = self._place(tuple(jnp.stack(k) for k in zip(*keys, strict=True)))
        t0 = time.perf_counter()
        self.state, self.metrics, self.rollouts, success, self.env_state, self.obs = (
            jax.block_until_ready(self._iteration(self.state, self.env_state, self.obs,
                                                  k_rollouts, k_updates)))
        seconds = time.perf_counter() - t0
        steps = rollout_episode_steps(self.rollouts, success)  # (K, T, E) each
        for k, tracker in enumerate(episodes):
            tracker.record_rollout(*(a[k] for a in steps))
        self.env_steps += self.rollout_env_steps
        for run in self.runs:
            run.env_steps = self.env_steps
        part = "agent" if self.compiled else "compile"
        self.compiled = True
        return Iteration(env_steps=self.rollout_env_steps,
                         updates=self.env_steps // self.rollout_env_steps
                         * self.actor_updates_per_rollout,
                         at_boundary=True, seconds={part: seconds})

    def set_phase(self, phase: int) -> None:
        """Every run enters ``phase`` of the sequential schedule (``OnPolicyRun.set_phase``);
        nothing happens if they are in it already."""
        if int(self.env_state.fixed_task[0]) == phase:
            return
        self.env_state, self.obs = self._with_fixed_task(self.env_state, self.obs, phase)
        self.state = self.state.replace(phase=self._replicated(jnp.asarray(phase, jnp.int32)))

    def _sync_runs(self) -> None:
        """Give every run its slice of the stacked state, metrics, latest rollout and envs (for
        its rows, probes and checkpoint)."""
        batched = self.state.replace(**dict.fromkeys(SHARED_FIELDS))
        shared = {field: getattr(self.state, field) for field in SHARED_FIELDS}
        for k, run in enumerate(self.runs):
            run.state = run_slice(batched, k).replace(**shared)
            run.metrics = run_slice(self.metrics, k)
            run.rollout = run_slice(self.rollouts, k)
            run.env.set_device_state(run_slice(self.env_state, k), self.obs[k])

    def train_rows(self) -> list[dict[str, Any]]:
        self._sync_runs()
        return [run.train_row() for run in self.runs]

    def probe_rows(self) -> list[dict[str, Any]]:
        self._sync_runs()
        return [run.probe_row() for run in self.runs]

    def evaluate(self) -> list[dict[str, Any]]:
        keys = self._place((jnp.stack([run.eval_key for run in self.runs]),
                            jnp.stack([run.eval_layout_key for run in self.runs])))
        scores = jax.device_get(self._evaluate(self._acting_weights(self.state), *keys))
        return [normalized_return_row(self.task_names, run_slice(scores, k))
                for k in range(len(self.runs))]

    def record_videos(self, env_step: int, episodes: int) -> list[Iterator[tuple[str, Video]]]:
        """Each run's ``OnPolicyRun.record_videos`` with its slice of the stacked state."""
        self._sync_runs()
        return [run.record_videos(env_step, episodes) for run in self.runs]

    def checkpoint(self) -> list[tuple[Any, dict[str, Any]]]:
        self._sync_runs()
        return [run.checkpoint() for run in self.runs]

    def masks(self) -> list[dict[str, NetworkMasks]]:
        return split_runs(state_masks(self.state), len(self.runs))

    def updates(self) -> int:
        return int(self.state.actor_step)

    def close(self) -> None:
        for run in self.runs:
            run.close()
