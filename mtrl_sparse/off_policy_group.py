"""SAC runs that differ only in seed and target sparsity, as one vmapped program (a ``RunGroup``,
``agent_kind.py``) on Meta-World.

Each run keeps its own ``OffPolicyRun`` as its host-side record: its Meta-World training and
evaluation vector envs, its current observations and episode ends, its config. A run starts as it
starts alone (its learner's ``init`` from its seed and its own target sparsities, its envs reset),
so the group begins where its runs begin alone. The device state of all runs is then stacked along
a leading run axis (``SACTrainState``: agent, replay buffer, rng, non-finite record) but for the
update counter, which the runs share unbatched (``TRAIN_STATE_AXES``), so that method events stay
real branches; each run's target sparsity is array data in its method state, so the first run's
learner, vmapped, acts and learns for every run (``make_group_learner``).

One iteration is one vector step of every run: each run's envs are reset where they ended and
stepped on the host, one run after another; between them one compiled ``act`` gives the actions of
all K runs, and one ``learn`` inserts every run's transitions into its replay buffer and updates
every run (the two dispatches of ``Learner.learn``, insert and update, each vmapped over the runs;
see ``mtrl_sparse.sac_learner`` for why they stay two). Meta-World episodes are synchronised and
the runs share the schedule, so their episodes end together: the group's boundaries are the runs'.

Rows, evaluations and checkpoints are taken per run, from its slice of the stacked state, by its
own ``OffPolicyRun`` (plasticity probes in one vmapped call): a checkpoint holds what the run alone
checkpoints (its train state and its envs' random state), so each run directory holds what the
same run executed alone writes (up to float rounding of batched against unbatched arithmetic), a
run of a group resumes alone and a run alone resumes in a group. A non-finite loss or action stops
the group with the error of the run it happened in, prefixed by the run's directory.

Where several devices are present (and divide the number of runs), the run axis is sharded over
them (``run_axis_sharding``): each device holds and computes its share of the runs, the update
counter is replicated.

Memory: a run's device state is its agent state plus its replay buffer (the paper's 1M
transitions of 84 float32 values: 336 MB); K runs take K times that, and taking a row or a
checkpoint copies one run's slice at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from mtrl_sparse.agent_kind import (
    EpisodeTracker,
    Iteration,
    NonFiniteLossError,
    check_finite_env_values,
)
from mtrl_sparse.agents.replay_buffer import ReplayBufferState, Transition
from mtrl_sparse.agents.sac import SACState
from mtrl_sparse.config import ConfigError, SACTrainConfig
from mtrl_sparse.mask_stats import NetworkMasks, split_runs, state_masks
from mtrl_sparse.off_policy import OffPolicyRun
from mtrl_sparse.run_axis import (
    check_same_program,
    replicated,
    run_axis_sharding,
    run_slice,
    stack_runs,
)
from mtrl_sparse.run_dir import scalar_row
from mtrl_sparse.sac_learner import Learner, SACTrainState
from mtrl_sparse.videos import Video

TRAIN_STATE_AXES = SACTrainState(
    agent=SACState(actor=0, critic=0, target_critic_params=0, log_alpha=0, step=None,
                   phase=None, target_critic_index=0),
    buffer=0, rng=0, first_nonfinite=0)
"""``vmap`` axes of K runs' stacked train states: every leaf has a leading run axis (0) but the
update counter and the phase, which the runs share (None)."""

Result = TypeVar("Result")


def _without_step(state: SACTrainState) -> SACTrainState:
    return state.replace(agent=state.agent.replace(step=None, phase=None))


def _with_step(state: SACTrainState, shared: SACState, place: Callable = jnp.copy
               ) -> SACTrainState:
    """``state`` with the shared fields (update counter, phase) of ``shared``, each
    ``place``d."""
    return state.replace(agent=state.agent.replace(step=place(shared.step),
                                                   phase=place(shared.phase)))


def stack_train_states(states: list[SACTrainState]) -> SACTrainState:
    """K runs' train states (taken at the same update) -> one, laid out as ``TRAIN_STATE_AXES``
    says: leaves (K, ...), the update counter () shared. Shares no array with ``states``."""
    return _with_step(stack_runs([_without_step(state) for state in states]), states[0].agent)


def train_state_of_run(states: SACTrainState, index: int) -> SACTrainState:
    """Run ``index``'s train state, as the run alone holds it, from stacked ``states`` (sharing
    no array with them)."""
    return _with_step(run_slice(_without_step(states), index), states.agent)


class GroupLearner(NamedTuple):
    """A ``Learner``'s steps vmapped over K runs' stacked train states (``TRAIN_STATE_AXES``).

    ``act(states, obs, warmup)``: (K, N, D) observations -> (states, (K, N, A) actions).
    ``learn(states, transitions, warmup)``: transitions with leaves (K, N, ...) -> (states, the
    last update's metrics with leaves (K, ...); ``{}`` in warm-up).
    ``probe(states)``: every run's plasticity metrics, leaves (K, ...).
    The states are donated to ``act`` and ``learn``; each step compiles once per variant.
    """

    act: Callable[[SACTrainState, jax.Array, bool], tuple[SACTrainState, jax.Array]]
    learn: Callable[[SACTrainState, Transition, bool], tuple[SACTrainState, dict[str, jax.Array]]]
    probe: Callable[[SACTrainState], dict[str, jax.Array]]


def make_group_learner(learner: Learner) -> GroupLearner:
    """``learner``'s act, learn and probe for K runs at once (see ``GroupLearner``): one compiled
    act, and learn as the learner's two dispatches, insert (buffers donated, written in place)
    and update (buffers only read), each vmapped over the runs."""
    state_axes, agent_axes = TRAIN_STATE_AXES, TRAIN_STATE_AXES.agent

    def vmapped_act(warmup: bool) -> Callable:
        return jax.jit(jax.vmap(lambda state, obs: learner.act(state, obs, warmup),
                                in_axes=(state_axes, 0), out_axes=(state_axes, 0)),
                       donate_argnums=0)

    acts = {warmup: vmapped_act(warmup) for warmup in (False, True)}
    insert = jax.jit(jax.vmap(learner.insert, in_axes=(0, 0, agent_axes.phase)),
                     donate_argnums=0)
    update = jax.jit(jax.vmap(learner.update, in_axes=(agent_axes, 0, 0, 0),
                              out_axes=((agent_axes, 0, 0), 0)), donate_argnums=(0, 1, 2))

    def act(states: SACTrainState, obs: jax.Array, warmup: bool
            ) -> tuple[SACTrainState, jax.Array]:
        return acts[warmup](states, obs)

    def learn(states: SACTrainState, transitions: Transition, warmup: bool
              ) -> tuple[SACTrainState, dict[str, jax.Array]]:
        buffer: ReplayBufferState = insert(states.buffer, transitions, states.agent.phase)
        states = states.replace(buffer=buffer)
        if warmup:
            return states, {}
        (agent, rng, first_nonfinite), last = update(states.agent, states.rng,
                                                     states.first_nonfinite, buffer)
        return states.replace(agent=agent, rng=rng, first_nonfinite=first_nonfinite), last

    probe = jax.jit(jax.vmap(learner.probe, in_axes=(state_axes,)))
    return GroupLearner(act=act, learn=learn, probe=probe)


def place_runs(tree: Any, sharding: NamedSharding | None) -> Any:
    """``tree`` (leaves with a leading run axis) split over the devices of ``sharding``; as it is
    where ``sharding`` is None (one device holds every run)."""
    return tree if sharding is None else jax.device_put(tree, sharding)


def place_train_states(states: SACTrainState, sharding: NamedSharding | None) -> SACTrainState:
    """Stacked train states split over the devices of ``sharding`` (``place_runs``), the shared
    update counter replicated on each."""
    if sharding is None:
        return states
    return _with_step(place_runs(_without_step(states), sharding), states.agent,
                      lambda x: jax.device_put(x, replicated(sharding)))


def run_name(config: SACTrainConfig) -> str:
    """How errors name a run of a group: its run directory (or its seed)."""
    return config.run_dir or f"seed {config.seed}"


def _open_runs(configs: list[SACTrainConfig]) -> list[OffPolicyRun]:
    """An ``OffPolicyRun`` (its envs built) per config; the envs built so far are closed if one
    fails."""
    runs: list[OffPolicyRun] = []
    try:
        for config in configs:
            runs.append(OffPolicyRun(config))
    except BaseException:
        for run in runs:
            run.close()
        raise
    return runs


class VmappedOffPolicyRuns:
    """K SAC runs on Meta-World in one vmapped program (module docstring)."""

    score_name = OffPolicyRun.score_name

    def __init__(self, configs: list[SACTrainConfig]):
        check_same_program(configs)
        if configs[0].schedule == "sequential":
            raise ConfigError("sequential SAC runs train one at a time (each switches its envs "
                              "at task boundaries); accepted: one run per group (--group-size 1)")
        self.runs = _open_runs(configs)
        first = self.runs[0]
        self.config = first.config  # the schedule every run shares
        self.task_names, self.num_envs = first.task_names, first.num_envs
        self.budget_env_steps, self.array_labels = first.budget_env_steps, first.array_labels
        self.layer_slices = first.layer_slices
        self.learner = make_group_learner(first.learner)
        self.sharding = run_axis_sharding(len(configs))
        self.state: SACTrainState | None = None
        self.last_metrics: dict[str, jax.Array] = {}
        self.compiled: set[bool] = set()  # variants (warm-up or not) whose first call was timed
        self.env_steps = self.updates_done = 0

    def _take_states(self) -> None:
        """Stack the runs' train states into the group's (the runs keep no copy)."""
        self.state = place_train_states(stack_train_states([run.state for run in self.runs]),
                                        self.sharding)
        for run in self.runs:
            run.state = None

    def start(self) -> None:
        for run in self.runs:
            run.start()
        self._take_states()

    def abstract_states(self) -> list[Any]:
        return [run.abstract_state() for run in self.runs]

    def restore(self, saved: list[tuple[Any, dict[str, Any]]]) -> None:
        for run, (state, meta) in zip(self.runs, saved, strict=True):
            run.restore(state, meta)
        self._take_states()
        self.env_steps, self.updates_done = self.runs[0].env_steps, self.runs[0].updates_done

    def iterate(self, episodes: list[EpisodeTracker]) -> Iteration:
        config = self.config
        t0 = time.perf_counter()
        for run in self.runs:
            if run.done is not None and run.done.any():
                run.obs = run.env.reset() if run.done.all() else run.env.reset_done(run.done)
        warmup = self.env_steps < config.warmup_env_steps
        obs = np.stack([run.obs for run in self.runs])  # (K, N, D)
        t1 = time.perf_counter()
        self.state, actions = self.learner.act(self.state, place_runs(obs, self.sharding),
                                               warmup)
        actions = np.asarray(actions)  # (K, N, A)
        if not np.all(np.isfinite(actions)):
            self._raise_non_finite_actions(actions)
        t2 = time.perf_counter()
        steps = [run.env.step(a) for run, a in zip(self.runs, actions, strict=True)]
        t3 = time.perf_counter()
        for run, step in zip(self.runs, steps, strict=True):
            try:
                check_finite_env_values(step.obs, step.reward, run.env.spec.env_task_ids,
                                        run.task_names, self.env_steps + self.num_envs)
            except NonFiniteLossError as error:
                raise NonFiniteLossError(f"run {run_name(run.config)}: {error}") from None
        transitions = Transition(
            obs=obs, actions=actions, rewards=np.stack([s.reward for s in steps]),
            next_obs=np.stack([s.obs for s in steps]),
            terminated=np.stack([s.terminated for s in steps]).astype(np.float32))
        self.state, metrics = self.learner.learn(
            self.state, place_runs(transitions, self.sharding), warmup)
        self.last_metrics = metrics or self.last_metrics
        agent_seconds = (t2 - t1) + (time.perf_counter() - t3)
        first_call = warmup not in self.compiled
        self.compiled.add(warmup)

        self.env_steps += self.num_envs
        if not warmup:
            self.updates_done += config.updates_per_vector_step
        for run, step, tracker in zip(self.runs, steps, episodes, strict=True):
            run.done = step.terminated | step.truncated
            tracker.record(run.env.spec.env_task_ids, step.reward, run.done, step.success)
            run.obs = step.obs
            run.env_steps, run.updates_done = self.env_steps, self.updates_done
        return Iteration(
            env_steps=self.num_envs, updates=self.updates_done,
            at_boundary=all(bool(run.done.all()) for run in self.runs),
            seconds={"env": (t1 - t0) + (t3 - t2),
                     "compile" if first_call else "agent": agent_seconds})

    def _on_run(self, index: int, method: Callable[[OffPolicyRun], Result]) -> Result:
        """``method(run)`` of run ``index``, the run holding its slice of the stacked state and
        metrics meanwhile; a ``NonFiniteLossError`` names the run."""
        run = self.runs[index]
        run.state = train_state_of_run(self.state, index)
        run.last_metrics = run_slice(self.last_metrics, index)
        try:
            return method(run)
        except NonFiniteLossError as error:
            raise NonFiniteLossError(f"run {run_name(run.config)}: {error}") from None
        finally:
            run.state = None

    def _per_run(self, method: Callable[[OffPolicyRun], Result]) -> list[Result]:
        """``_on_run`` of every run, in order (one run's slice of the state at a time)."""
        return [self._on_run(k, method) for k in range(len(self.runs))]

    def _raise_non_finite_actions(self, actions: np.ndarray) -> None:
        """The error of the first run with a non-finite action in (K, N, A) ``actions``: its
        first non-finite loss if one was recorded, else the actions."""
        finite = np.isfinite(actions).reshape(len(self.runs), -1).all(axis=1)
        env_steps = self.env_steps

        def check(run: OffPolicyRun) -> None:
            run._check_finite()
            raise NonFiniteLossError(f"non-finite actions at env step {env_steps}; run stopped")

        self._on_run(int(np.flatnonzero(~finite)[0]), check)

    def train_rows(self) -> list[dict[str, Any]]:
        return self._per_run(OffPolicyRun.train_row)

    def probe_rows(self) -> list[dict[str, Any]]:
        metrics = jax.device_get(self.learner.probe(self.state))
        return [scalar_row(run_slice(metrics, k)) for k in range(len(self.runs))]

    def evaluate(self) -> list[dict[str, Any]]:
        return self._per_run(OffPolicyRun.evaluate)

    def record_videos(self, env_step: int, episodes: int) -> list[Iterator[tuple[str, Video]]]:
        """Each run's ``OffPolicyRun.record_videos`` with its slice of the stacked state."""
        return self._per_run(lambda run: run.record_videos(env_step, episodes))

    def checkpoint(self) -> list[tuple[Any, dict[str, Any]]]:
        return self._per_run(OffPolicyRun.checkpoint)

    def masks(self) -> list[dict[str, NetworkMasks]]:
        return split_runs(state_masks(self.state), len(self.runs))

    def updates(self) -> int:
        return int(self.state.agent.step)

    def close(self) -> None:
        for run in self.runs:
            run.close()
