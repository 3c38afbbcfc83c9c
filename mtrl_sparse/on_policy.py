"""The on-policy agent kind: multi-task PPO with rollouts on MiniGrid.

One iteration collects a rollout of ``ppo.rollout_env_steps`` env steps (``T = rollout / num_envs``
vector steps of the ``num_envs`` workers) with the jitted policy (one call per vector step), then
calls the jitted ``update`` once (GAE, the critic's and the actor's epochs of minibatches). Envs
follow the explicit reset convention: an env whose episode ended is reset before the next vector
step; a truncated episode bootstraps from the value of its true final observation
(``truncation_values``). Every rollout's end is a boundary where the run may checkpoint or end:
a checkpoint holds the MiniGrid envs' full state (episodes in progress included).

Evaluation runs on separate envs seeded apart from training, with the sampled policy by default
(``mtrl_sparse.evaluation.evaluate_normalized_return``). Videos (``record_videos``) replay the
evaluation's first episodes of every task with the same policy on the JAX MiniGrid, whatever the
training backend (``mtrl_sparse.videos``).
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mtrl_sparse.agent_kind import (
    EpisodeTracker,
    Iteration,
    NonFiniteLossError,
    check_finite_env_values,
    eval_env_seed,
)
from mtrl_sparse.agents.cnn import per_task_leaves, stacked_head_layers
from mtrl_sparse.agents.ppo import PPO, PPOState, Rollout, make_ppo, updates_per_rollout
from mtrl_sparse.config import PPOTrainConfig
from mtrl_sparse.envs import minigrid_jax as mj
from mtrl_sparse.envs.minigrid import MiniGridVectorEnv
from mtrl_sparse.envs.minigrid_jax_vector import GridVector, JaxMiniGridVectorEnv, VectorState
from mtrl_sparse.evaluation import (
    evaluate_normalized_return,
    make_compiled_normalized_return,
    normalized_return_row,
)
from mtrl_sparse.mask_stats import NetworkMasks, state_masks
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.probe import make_ppo_probe
from mtrl_sparse.run_dir import method_state_row, scalar_row
from mtrl_sparse.videos import Video, make_minigrid_recorder, minigrid_videos


def make_run_ppo(config: PPOTrainConfig, env: Any, sparsities: dict[str, Any] | None = None
                 ) -> PPO:
    """The agent of a run: networks built from the run's methods. ``sparsities`` (per network,
    may be traced) replaces the configured target sparsities, for runs vmapped over them."""
    sparsities = sparsities or {}
    spec = env.spec
    networks = {name: build_network(dataclasses.replace(
                    settings, sparsity=sparsities.get(name, settings.sparsity),
                    layer_slices=stacked_head_layers(spec.num_tasks),
                    task_leaves=per_task_leaves(spec.num_tasks)),
                    config.methods, name)
                for name, settings in config.network_methods().items()}
    return make_ppo(config.ppo, spec.num_tasks, spec.obs_shape, spec.action_dim,
                    networks["actor"], networks["critic"])


def make_policy_step(ppo: PPO) -> Any:
    """``policy_step(weights, obs, task_ids, key, t, deterministic=False)``: ``ppo.act_with``
    on ``ppo.acting_weights`` with the key of vector step ``t`` folded in on the device, jitted;
    one dispatch per vector step."""

    def policy_step(weights: Any, obs: jax.Array, task_ids: jax.Array, key: jax.Array,
                    t: jax.Array, deterministic: bool = False):
        return ppo.act_with(weights, obs, task_ids, jax.random.fold_in(key, t), deterministic)

    return jax.jit(policy_step, static_argnames="deterministic")


def collect_rollout(
    policy_step: Any, value: Any, weights: Any, env: MiniGridVectorEnv, obs: np.ndarray,
    key: jax.Array, horizon: int, episodes: EpisodeTracker, env_steps: int = 0,
) -> tuple[Rollout, np.ndarray, float]:
    """``horizon`` vector steps with the policy of ``weights`` (``ppo.acting_weights`` of the
    state), starting after ``env_steps`` of the run; returns the rollout, the next obs and the
    seconds spent inside the envs (steps and resets). A non-finite observation or reward stops
    the run (``check_finite_env_values``).

    Per vector step the host makes one policy call and fetches only the actions; log-probs and
    values stay on the device until the rollout is stacked.
    """
    num_envs = env.spec.num_envs
    host = {name: [] for name in ("obs", "task_ids", "actions", "rewards", "terminated",
                                  "truncated", "truncation_values")}
    log_probs, values = [], []
    no_truncation = np.zeros(num_envs, np.float32)
    env_time = 0.0
    for t in range(horizon):
        task_ids = env.current_task_ids()
        actions, step_log_probs, step_values = policy_step(weights, obs, task_ids, key, t)
        actions = np.asarray(actions)
        t_env = time.perf_counter()
        step = env.step(actions)
        env_time += time.perf_counter() - t_env
        check_finite_env_values(step.obs, step.reward, task_ids, env.spec.task_names,
                                env_steps + (t + 1) * num_envs)
        cut = step.truncated & ~step.terminated
        truncation_values = no_truncation
        if cut.any():  # bootstrap through the time limit from the true final observation
            truncation_values = np.where(cut, np.asarray(value(weights, step.obs, task_ids)),
                                         0.0).astype(np.float32)
        for name, array in (("obs", obs), ("task_ids", task_ids), ("actions", actions),
                            ("rewards", step.reward), ("terminated", step.terminated),
                            ("truncated", step.truncated),
                            ("truncation_values", truncation_values)):
            host[name].append(array)
        log_probs.append(step_log_probs)
        values.append(step_values)
        done = step.terminated | step.truncated
        episodes.record(task_ids, step.reward, done, step.success)
        if done.any():
            t_env = time.perf_counter()
            obs = env.reset_done(done)
            env_time += time.perf_counter() - t_env
        else:
            obs = step.obs
    last_values = value(weights, obs, env.current_task_ids())
    rollout = Rollout(**{name: jnp.asarray(np.stack(arrays)) for name, arrays in host.items()},
                      log_probs=jnp.stack(log_probs), values=jnp.stack(values),
                      last_values=jnp.asarray(last_values, jnp.float32))
    return rollout, obs, env_time


def make_minigrid_env(config: PPOTrainConfig, num_envs: int, seed: int,
                      compute_optimal: bool = False) -> MiniGridVectorEnv | JaxMiniGridVectorEnv:
    """The run's MiniGrid vector env on the configured backend."""
    env_cfg = config.env
    if env_cfg.backend == "jax":
        return JaxMiniGridVectorEnv(env_cfg.benchmark, num_envs, seed, task=env_cfg.task,
                                    compute_optimal=compute_optimal)
    return MiniGridVectorEnv(env_cfg.benchmark, num_envs, seed, env_cfg.vector_strategy,
                             task=env_cfg.task, compute_optimal=compute_optimal)


def make_compiled_rollout(ppo: PPO, core: GridVector, horizon: int) -> Any:
    """``rollout(weights, env_state, obs, key) -> (rollout, env_state, obs)``: ``horizon``
    vector steps of the JAX envs as one ``lax.scan``, the same transitions as ``collect_rollout``
    on ``JaxMiniGridVectorEnv`` (same keys per step, the same bootstrap through time limits).

    ``obs``: (num_envs, 7, 7, 3) uint8 observations of ``env_state``'s current episodes.
    """

    def one_step(carry, t):
        weights, env_state, obs, key = carry
        task_ids = env_state.envs.task
        obs_in = obs.astype(jnp.float32)
        actions, log_probs, values = ppo.act_with(weights, obs_in, task_ids,
                                                  jax.random.fold_in(key, t))
        env_state, step = core.step(env_state, actions)
        cut = step.truncated & ~step.terminated
        truncation_values = jax.lax.cond(
            cut.any(),
            lambda: jnp.where(cut, ppo.value_with(weights, step.obs.astype(jnp.float32),
                                                  task_ids), 0.0).astype(jnp.float32),
            lambda: jnp.zeros(cut.shape, jnp.float32))
        done = step.terminated | step.truncated
        env_state, obs = core.reset_where(env_state, step.obs, done)
        row = {"obs": obs_in, "task_ids": task_ids, "actions": actions, "log_probs": log_probs,
               "values": values, "rewards": step.reward, "terminated": step.terminated,
               "truncated": step.truncated, "truncation_values": truncation_values,
               "success": step.success}
        return (weights, env_state, obs, key), row

    def rollout(weights: Any, env_state: VectorState, obs: jax.Array, key: jax.Array):
        (_, env_state, obs, _), rows = jax.lax.scan(
            one_step, (weights, env_state, obs, key), jnp.arange(horizon))
        success = rows.pop("success")
        last_values = ppo.value_with(weights, obs.astype(jnp.float32), env_state.envs.task)
        return Rollout(**rows, last_values=last_values.astype(jnp.float32)), success, env_state, obs

    return rollout


def rollout_episode_steps(rollout: Rollout, success: jax.Array
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What ``EpisodeTracker.record_rollout`` needs of a compiled rollout, fetched to the host:
    task ids, rewards, episode ends and success flags, (..., T, E) each (only these, not the
    observations)."""
    tasks, rewards, terminated, truncated, success = jax.device_get((
        rollout.task_ids, rollout.rewards, rollout.terminated, rollout.truncated, success))
    return tasks, rewards, terminated | truncated, success


def make_compiled_iteration(ppo: PPO, core: GridVector, horizon: int) -> Any:
    """``iteration(state, env_state, obs, k_rollout, k_update)`` -> ``(state, metrics, rollout,
    success, env_state, obs)``: a compiled rollout (``make_compiled_rollout``) with the state's
    acting weights, then ``ppo.update`` on it; the same numbers as the host-stepped rollout and
    update of ``OnPolicyRun.iterate`` with the same keys."""
    rollout_fn = make_compiled_rollout(ppo, core, horizon)

    def iteration(state: PPOState, env_state: VectorState, obs: jax.Array,
                  k_rollout: jax.Array, k_update: jax.Array):
        rollout, success, env_state, obs = rollout_fn(ppo.acting_weights(state), env_state, obs,
                                                      k_rollout)
        state, metrics = ppo.update(state, rollout, k_update)
        return state, metrics, rollout, success, env_state, obs

    return iteration


class OnPolicyRun:
    """PPO on MiniGrid as the run loop drives it (``mtrl_sparse.agent_kind.AgentKind``)."""

    score_name = "eval/normalized_return"
    array_labels: dict[str, tuple[str, ...]] = {}

    def __init__(self, config: PPOTrainConfig):
        self.config = config
        env_cfg = config.env
        self.env = make_minigrid_env(config, env_cfg.num_envs, config.seed)
        # The jax backend evaluates in compiled code (make_compiled_normalized_return) on layouts
        # of the evaluation seed; the farama backend steps evaluation envs of that seed.
        self.eval_env = (None if env_cfg.backend == "jax" else
                         make_minigrid_env(config, env_cfg.eval_envs, eval_env_seed(config.seed),
                                           compute_optimal=True))
        spec = self.env.spec
        self.task_names = spec.task_names
        self.num_envs = spec.num_envs
        self.layer_slices = stacked_head_layers(spec.num_tasks)
        self.rollout_env_steps = config.ppo.rollout_env_steps
        self.budget_env_steps = config.rollouts() * self.rollout_env_steps
        self.horizon = self.rollout_env_steps // spec.num_envs
        self.actor_updates_per_rollout = updates_per_rollout(config.ppo)["actor"]
        ppo = self.ppo = make_run_ppo(config, self.env)
        self.policy_step = make_policy_step(ppo)
        self.value = jax.jit(ppo.value_with)
        self.acting_weights = jax.jit(ppo.acting_weights)
        self.update = jax.jit(ppo.update, donate_argnums=0)
        plasticity = config.plasticity
        self.probe = jax.jit(make_ppo_probe(ppo, plasticity.dormant_tau, plasticity.srank_delta,
                                            layer_slices=stacked_head_layers(spec.num_tasks)))
        self.compiled_iteration = self.compiled_evaluation = None
        if isinstance(self.env, JaxMiniGridVectorEnv):
            self.compiled_iteration = jax.jit(
                make_compiled_iteration(ppo, self.env.core, self.horizon), donate_argnums=0)
            self.compiled_evaluation = jax.jit(make_compiled_normalized_return(
                ppo.act_with, spec.task_names, env_cfg.eval_episodes_per_task,
                env_cfg.eval_deterministic))
            self.eval_layout_key = jax.random.PRNGKey(eval_env_seed(config.seed))
        self.key, self.init_key = jax.random.split(jax.random.PRNGKey(config.seed))
        self.eval_key = self.key
        self.video_recorders: dict[int, Any] = {}  # per episode count, built when first asked
        self.state: PPOState | None = None
        self.metrics: dict[str, jax.Array] = {}
        self.rollout: Rollout | None = None
        self.obs: np.ndarray | None = None
        self.env_steps = 0
        self.compiled = False

    def start(self) -> None:
        self.state = jax.jit(self.ppo.init)(self.init_key)
        self.obs = self.env.reset()

    def abstract_state(self) -> Any:
        return jax.eval_shape(self.ppo.init, self.init_key)

    def restore(self, state: PPOState, meta: dict[str, Any]) -> None:
        self.state = state
        self.key = jnp.asarray(meta["key"], dtype=self.key.dtype)
        self.obs = self.env.set_state(base64.b64decode(meta["env_state"]))
        self.env_steps = meta["env_steps"]

    def iterate(self, episodes: EpisodeTracker) -> Iteration:
        self.key, k_rollout, k_update, self.eval_key = jax.random.split(self.key, 4)
        if self.compiled_iteration is not None:
            return self._iterate_compiled(episodes, k_rollout, k_update)
        t0 = time.perf_counter()
        self.rollout, self.obs, env_seconds = collect_rollout(
            self.policy_step, self.value, self.acting_weights(self.state), self.env, self.obs,
            k_rollout, self.horizon, episodes, self.env_steps)
        t1 = time.perf_counter()
        self.state, self.metrics = jax.block_until_ready(
            self.update(self.state, self.rollout, k_update))
        t2 = time.perf_counter()
        update_part = "agent" if self.compiled else "compile"
        self.compiled = True
        self.env_steps += self.rollout_env_steps
        seconds = {"env": env_seconds, "agent": t1 - t0 - env_seconds}
        seconds[update_part] = seconds.get(update_part, 0.0) + t2 - t1
        return Iteration(env_steps=self.rollout_env_steps, updates=self._actor_updates(),
                         at_boundary=True, seconds=seconds)

    def _iterate_compiled(self, episodes: EpisodeTracker, k_rollout: jax.Array,
                          k_update: jax.Array) -> Iteration:
        """The jax backend: the rollout and the update in one compiled call; the envs' state
        moves between the call and ``self.env`` (which checkpoints it) without leaving the
        device."""
        t0 = time.perf_counter()
        env_state, obs = self.env.device_state()
        self.state, self.metrics, self.rollout, success, env_state, obs = jax.block_until_ready(
            self.compiled_iteration(self.state, env_state, obs, k_rollout, k_update))
        self.env.set_device_state(env_state, obs)
        t1 = time.perf_counter()
        episodes.record_rollout(*rollout_episode_steps(self.rollout, success))
        seconds = {"agent": time.perf_counter() - t1}
        part = "agent" if self.compiled else "compile"
        seconds[part] = seconds.get(part, 0.0) + t1 - t0
        self.compiled = True
        self.env_steps += self.rollout_env_steps
        return Iteration(env_steps=self.rollout_env_steps, updates=self._actor_updates(),
                         at_boundary=True, seconds=seconds)

    def set_phase(self, phase: int) -> None:
        """Enter ``phase`` of the sequential schedule: the agent's ``phase`` becomes it and every
        training env starts an episode of task ``phase`` (as do all later episodes). Nothing
        happens if the run is in it already (a resumed run is)."""
        if self.env.fixed_task() == phase:
            return
        self.obs = self.env.fix_task(phase)
        self.state = self.state.replace(phase=jnp.asarray(phase, jnp.int32))

    def _actor_updates(self) -> int:
        """Actor updates after the rollouts collected so far (host-side count)."""
        return self.env_steps // self.rollout_env_steps * self.actor_updates_per_rollout

    def train_row(self) -> dict[str, Any]:
        state = self.state
        row = {"updates": int(state.actor_step), "critic_updates": int(state.critic_step),
               **scalar_row(self.metrics),
               **method_state_row({"actor": state.actor, "critic": state.critic})}
        if not all(np.isfinite(row[k]) for k in ("policy_loss", "value_loss")):
            raise NonFiniteLossError(
                f"non-finite loss at env step {self.env_steps} (policy_loss "
                f"{row['policy_loss']}, value_loss {row['value_loss']}); run stopped")
        return row

    def probe_row(self) -> dict[str, Any]:
        """Plasticity metrics on the first ``plasticity.batch_size`` samples of the latest
        rollout."""
        batch_size = self.config.plasticity.batch_size
        obs, task_ids = (x.reshape(-1, *x.shape[2:])[:batch_size]
                         for x in (self.rollout.obs, self.rollout.task_ids))
        return {"updates": self._actor_updates(),
                **scalar_row(self.probe(self.state, obs, task_ids,
                                        jax.random.fold_in(self.eval_key, 1)))}

    def evaluate(self) -> dict[str, Any]:
        return self._evaluate(self.state, self.eval_key)

    def evaluate_checkpoint(self, state: PPOState, env_step: int) -> dict[str, Any]:
        """The evaluation row of a checkpoint's state: the run's own evaluation episodes (the
        same layouts as its logged evaluations), actions sampled with a key of its own. The
        checkpoint's state becomes this run's state."""
        self.state = state
        return self._evaluate(state, jax.random.fold_in(jax.random.PRNGKey(self.config.seed),
                                                        env_step))

    def _evaluate(self, state: PPOState, key: jax.Array) -> dict[str, Any]:
        env_cfg = self.config.env
        if self.compiled_evaluation is not None:
            scores = self.compiled_evaluation(self.acting_weights(state), key,
                                              self.eval_layout_key)
            return normalized_return_row(self.task_names, jax.device_get(scores))
        return evaluate_normalized_return(self.policy_step, self.acting_weights(state),
                                          self.eval_env, env_cfg.eval_episodes_per_task, key,
                                          env_cfg.eval_deterministic)

    @staticmethod
    def video_problem(config: PPOTrainConfig) -> str | None:
        """Why this run's videos cannot be made (None: they can): a task the JAX MiniGrid, which
        records them, does not implement."""
        missing = [name for name in config.task_names() if name not in mj.TASK_RULES]
        if missing:
            return (f"videos are recorded on the JAX MiniGrid, which lacks {', '.join(missing)}; "
                    f"it implements {', '.join(mj.TASK_RULES)}")
        return None

    def record_videos(self, env_step: int, episodes: int) -> Iterator[tuple[str, Video]]:
        """(task, video) of every task: ``episodes`` episodes of the run's evaluation layouts
        played by the current state's evaluation policy (greedy or sampled, as the run's
        evaluations), its actions sampled with the key ``evaluate_checkpoint`` uses at
        ``env_step``. The episodes are played now; the frames are drawn as the iterator is read."""
        if episodes not in self.video_recorders:
            env_cfg = self.config.env
            self.video_recorders[episodes] = make_minigrid_recorder(
                self.ppo.act_with, self.task_names, episodes, env_cfg.eval_episodes_per_task,
                env_cfg.eval_deterministic)
        seed_key = jax.random.PRNGKey(self.config.seed)
        states, lengths = self.video_recorders[episodes](
            self.acting_weights(self.state), jax.random.fold_in(seed_key, env_step),
            jax.random.PRNGKey(eval_env_seed(self.config.seed)))
        return minigrid_videos(states, lengths, self.task_names, episodes)

    def checkpoint(self) -> tuple[PPOState, dict[str, Any]]:
        return self.state, {"key": np.asarray(self.key).tolist(),
                            "env_state": base64.b64encode(self.env.get_state()).decode("ascii")}

    def masks(self) -> dict[str, NetworkMasks]:
        return state_masks(self.state)

    def updates(self) -> int:
        return int(self.state.actor_step)

    def close(self) -> None:
        self.env.close()
        if self.eval_env is not None:
            self.eval_env.close()
