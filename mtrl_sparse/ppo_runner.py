"""The multi-task PPO training loop on MiniGrid: rollouts on the host envs, one jitted update each.

One iteration collects a rollout of ``ppo.rollout_env_steps`` env steps (``T = rollout / num_envs``
vector steps of the ``num_envs`` workers) with the jitted policy (one call per vector step), then
calls the jitted ``update`` once (GAE, the critic's and the actor's epochs of minibatches). Envs
follow the explicit reset convention: an env whose episode ended is reset before the next vector
step; a truncated episode bootstraps from the value of its true final observation
(``truncation_values``).

Evaluation (every ``eval_every_env_steps`` and at the end) runs on separate envs seeded apart
from training, with the sampled policy by default, until the first ``eval_episodes_per_task``
episodes started on every task have ended; each episode's normalised return is its return over
the best achievable return of its own layout (``envs.minigrid_optimal``). The loop never names a
sparsity method. A checkpoint (orbax, the agent state) is written at the end of the run.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mtrl_sparse.agents.ppo import PPO, Rollout, make_ppo, updates_per_rollout
from mtrl_sparse.checkpointing import Checkpointer
from mtrl_sparse.config import PPOTrainConfig
from mtrl_sparse.envs.minigrid import MiniGridVectorEnv
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.probe import make_ppo_probe
from mtrl_sparse.run_dir import (
    MetricsLogger,
    crossed,
    method_state_row,
    scalar_row,
    truncate_metrics,
)

EVAL_SEED_OFFSET = 1_000_003


def make_run_ppo(config: PPOTrainConfig, env: MiniGridVectorEnv) -> PPO:
    """The agent of a run: networks built from the run's methods."""
    networks = {name: build_network(settings, config.methods, name)
                for name, settings in config.network_methods().items()}
    spec = env.spec
    return make_ppo(config.ppo, spec.num_tasks, spec.obs_shape, spec.action_dim,
                    networks["actor"], networks["critic"])


class EpisodeStats:
    """Returns and successes of the training episodes that ended since the last row, per task."""

    def __init__(self, num_tasks: int, num_envs: int):
        self.returns = np.zeros(num_envs)
        self.ended: list[list[tuple[float, bool]]] = [[] for _ in range(num_tasks)]

    def record(self, task_ids: np.ndarray, rewards: np.ndarray, done: np.ndarray,
               success: np.ndarray) -> None:
        self.returns += rewards
        for env in np.flatnonzero(done):
            self.ended[task_ids[env]].append((float(self.returns[env]), bool(success[env])))
            self.returns[env] = 0.0

    def dump(self) -> dict[str, Any]:
        """JSON-ready state (for checkpoints): running returns and the episodes not yet rowed."""
        return {"returns": self.returns.tolist(), "ended": self.ended}

    def load(self, state: dict[str, Any]) -> None:
        """Restore a ``dump``."""
        self.returns = np.asarray(state["returns"], dtype=np.float64)
        self.ended = [[(float(r), bool(s)) for r, s in per_task] for per_task in state["ended"]]

    def pop_row(self, task_names: tuple[str, ...]) -> dict[str, float]:
        episodes = [e for per_task in self.ended for e in per_task]
        row = {}
        if episodes:
            row["train/return"] = float(np.mean([r for r, _ in episodes]))
            row["train/success_rate"] = float(np.mean([s for _, s in episodes]))
            row["train/episodes"] = len(episodes)
        for name, per_task in zip(task_names, self.ended, strict=True):
            if per_task:
                row[f"train/return/{name}"] = float(np.mean([r for r, _ in per_task]))
        self.ended = [[] for _ in self.ended]
        return row


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
    key: jax.Array, horizon: int, stats: EpisodeStats,
) -> tuple[Rollout, np.ndarray, float]:
    """``horizon`` vector steps with the policy of ``weights`` (``ppo.acting_weights`` of the
    state); returns the rollout, the next obs and the seconds spent inside the envs (steps and
    resets).

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
        stats.record(task_ids, step.reward, done, step.success)
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


def evaluate_ppo(
    policy_step: Any, weights: Any, env: MiniGridVectorEnv, episodes_per_task: int,
    key: jax.Array, deterministic: bool,
) -> dict[str, float]:
    """Normalised return and success of the first ``episodes_per_task`` episodes started on each
    task; the env's random state is restored afterwards, so every evaluation sees the same
    episodes. Returns an ``eval/...`` row."""
    rng_state = env.get_rng_state()
    spec = env.spec
    obs = env.reset()
    started = np.zeros(spec.num_tasks, int)
    episode_index = np.zeros(spec.num_envs, int)  # per env: its episode's rank on its task
    best = np.zeros(spec.num_envs)
    returns = np.zeros(spec.num_envs)
    results: list[dict[int, tuple[float, bool]]] = [{} for _ in range(spec.num_tasks)]

    def start(envs: np.ndarray) -> None:
        tasks, best_returns = env.current_task_ids(), env.episode_best_returns()
        for e in envs:
            episode_index[e] = started[tasks[e]]
            started[tasks[e]] += 1
            best[e], returns[e] = best_returns[e], 0.0

    def complete() -> bool:
        return all(all(i in r for i in range(episodes_per_task)) for r in results)

    start(np.arange(spec.num_envs))
    t = 0
    while not complete():
        tasks = env.current_task_ids()
        actions, _, _ = policy_step(weights, obs, tasks, key, t, deterministic)
        step = env.step(np.asarray(actions))
        returns += step.reward
        done = step.terminated | step.truncated
        for e in np.flatnonzero(done):
            if episode_index[e] < episodes_per_task and np.isfinite(best[e]):
                results[tasks[e]][int(episode_index[e])] = (returns[e] / best[e],
                                                            bool(step.success[e]))
            elif episode_index[e] < episodes_per_task:  # an unsolvable layout: not counted
                results[tasks[e]][int(episode_index[e])] = (np.nan, bool(step.success[e]))
        if done.any():
            obs = env.reset_done(done)
            start(np.flatnonzero(done))
        else:
            obs = step.obs
        t += 1
    env.set_rng_state(rng_state)

    row: dict[str, float] = {}
    per_task_norm, per_task_success = [], []
    for name, per_task in zip(spec.task_names, results, strict=True):
        chosen = [per_task[i] for i in range(episodes_per_task)]
        norm = float(np.nanmean([r for r, _ in chosen]))
        success = float(np.mean([s for _, s in chosen]))
        row[f"eval/normalized_return/{name}"] = norm
        row[f"eval/success/{name}"] = success
        per_task_norm.append(norm)
        per_task_success.append(success)
    row["eval/normalized_return"] = float(np.mean(per_task_norm))
    row["eval/success_rate"] = float(np.mean(per_task_success))
    return row


def make_eval_env(config: PPOTrainConfig) -> MiniGridVectorEnv:
    """The evaluation envs of a run: seeded apart from training, optimal returns computed."""
    return MiniGridVectorEnv(config.env.benchmark, config.env.eval_envs,
                             config.seed + EVAL_SEED_OFFSET, config.env.vector_strategy,
                             compute_optimal=True)


def evaluate_ppo_checkpoint(config: PPOTrainConfig, checkpointer: Checkpointer, step: int,
                            deterministic: bool | None = None) -> tuple[dict[str, float], int]:
    """The evaluation row and the actor's update count of the checkpoint at env step ``step``:
    the run's own evaluation settings and episodes (the same layouts as its logged evaluations),
    actions sampled with a key of its own unless ``deterministic`` (None: the run's
    ``eval_deterministic``)."""
    eval_env = make_eval_env(config)
    try:
        ppo = make_run_ppo(config, eval_env)
        abstract = jax.eval_shape(ppo.init, jax.random.PRNGKey(0))
        state, _ = checkpointer.restore(step, abstract)
        deterministic = config.env.eval_deterministic if deterministic is None else deterministic
        row = evaluate_ppo(make_policy_step(ppo), ppo.acting_weights(state), eval_env,
                           config.env.eval_episodes_per_task,
                           jax.random.fold_in(jax.random.PRNGKey(config.seed), step),
                           deterministic)
        return row, int(state.actor_step)
    finally:
        eval_env.close()


def train_ppo(config: PPOTrainConfig, run_dir: Any, resume: bool = False) -> dict[str, Any]:
    """Train multi-task PPO as ``config`` says into the prepared ``run_dir``; with ``resume``,
    continue from its latest checkpoint (the same numbers as an uninterrupted run).

    Returns a summary: env steps, the final state, the final evaluation row, the task names and
    wall-clock seconds per part of the loop.
    """
    env_cfg = config.env
    env = MiniGridVectorEnv(env_cfg.benchmark, env_cfg.num_envs, config.seed,
                            env_cfg.vector_strategy)
    eval_env = make_eval_env(config)
    spec = env.spec
    ppo = make_run_ppo(config, env)
    policy_step = make_policy_step(ppo)
    value = jax.jit(ppo.value_with)
    acting_weights = jax.jit(ppo.acting_weights)
    update = jax.jit(ppo.update, donate_argnums=0)
    plasticity = config.plasticity
    probe = jax.jit(make_ppo_probe(ppo, plasticity.dormant_tau, plasticity.srank_delta))
    actor_updates_per_rollout = updates_per_rollout(config.ppo)["actor"]
    checkpointer = Checkpointer(run_dir / "checkpoints", config.keep_checkpoints)
    stats = EpisodeStats(spec.num_tasks, spec.num_envs)
    key, init_key = jax.random.split(jax.random.PRNGKey(config.seed))
    if resume:
        env_steps = checkpointer.latest_step()
        state, meta = checkpointer.restore(env_steps, jax.eval_shape(ppo.init, init_key))
        key = jnp.asarray(meta["key"], dtype=key.dtype)
        obs = env.set_state(base64.b64decode(meta["env_state"]))
        stats.load(meta["episode_stats"])
        last_eval = meta["last_eval"]
        truncate_metrics(run_dir, env_steps)
    else:
        env_steps, state, last_eval = 0, jax.jit(ppo.init)(init_key), None
        obs = env.reset()
    horizon = config.ppo.rollout_env_steps // spec.num_envs
    logger = MetricsLogger(run_dir, {}, purge_step=env_steps or None)
    seconds = dict.fromkeys(("rollout", "rollout_in_env", "update", "eval", "logging",
                             "checkpoint"), 0.0)  # rollout_in_env: of rollout, inside the envs
    bar = tqdm(total=config.rollouts() * config.ppo.rollout_env_steps, initial=env_steps,
               unit="step", unit_scale=True, dynamic_ncols=True, disable=not config.progress,
               desc="env steps")
    t_start = t_interval = time.perf_counter()
    steps_interval = env_steps
    try:
        first = env_steps // config.ppo.rollout_env_steps
        for rollout_index in range(first, config.rollouts()):
            key, k_rollout, k_update, k_eval = jax.random.split(key, 4)
            t0 = time.perf_counter()
            rollout, obs, env_time = collect_rollout(policy_step, value, acting_weights(state),
                                                     env, obs, k_rollout, horizon, stats)
            t1 = time.perf_counter()
            state, metrics = jax.block_until_ready(update(state, rollout, k_update))
            t2 = time.perf_counter()
            seconds["rollout"] += t1 - t0
            seconds["rollout_in_env"] += env_time
            seconds["update"] += t2 - t1
            before, env_steps = env_steps, env_steps + config.ppo.rollout_env_steps
            bar.update(config.ppo.rollout_env_steps)
            last = rollout_index == config.rollouts() - 1
            if crossed(env_steps, before, config.log_every_env_steps) or last:
                now = time.perf_counter()
                row = {"step": env_steps, "updates": int(state.actor_step),
                       "critic_updates": int(state.critic_step),
                       **scalar_row(metrics),
                       **method_state_row({"actor": state.actor, "critic": state.critic}),
                       **stats.pop_row(spec.task_names),
                       "time/env_steps_per_s": (env_steps - steps_interval) / (now - t_interval),
                       "time/elapsed_s": now - t_start}
                if not all(np.isfinite(row[k]) for k in ("policy_loss", "value_loss")):
                    raise FloatingPointError(
                        f"non-finite loss at env step {env_steps} (policy_loss "
                        f"{row['policy_loss']}, value_loss {row['value_loss']}); run stopped")
                logger.write(row)
                t_interval, steps_interval = now, env_steps
                bar.set_postfix({"return": f"{row.get('train/return', float('nan')):.2f}"})
                seconds["logging"] += time.perf_counter() - now
            actor_updates = (rollout_index + 1) * actor_updates_per_rollout
            if plasticity.every_updates and crossed(
                    actor_updates, actor_updates - actor_updates_per_rollout,
                    plasticity.every_updates):
                t0 = time.perf_counter()
                obs_batch, task_batch = (x.reshape(-1, *x.shape[2:])[:plasticity.batch_size]
                                         for x in (rollout.obs, rollout.task_ids))
                logger.write({"step": env_steps, "updates": actor_updates,
                              **scalar_row(probe(state, obs_batch, task_batch,
                                                 jax.random.fold_in(k_eval, 1)))})
                seconds["logging"] += time.perf_counter() - t0
            if crossed(env_steps, before, config.eval_every_env_steps) or last:
                t0 = time.perf_counter()
                last_eval = evaluate_ppo(policy_step, acting_weights(state), eval_env,
                                         env_cfg.eval_episodes_per_task, k_eval,
                                         env_cfg.eval_deterministic)
                seconds["eval"] += time.perf_counter() - t0
                logger.write({"step": env_steps, **last_eval, "time/eval_s": seconds["eval"]})
            if crossed(env_steps, before, config.checkpoint_every_env_steps) or last:
                t0 = time.perf_counter()
                checkpointer.save(env_steps, state, {
                    "env_steps": env_steps, "key": np.asarray(key).tolist(),
                    "env_state": base64.b64encode(env.get_state()).decode("ascii"),
                    "episode_stats": stats.dump(), "last_eval": last_eval})
                seconds["checkpoint"] += time.perf_counter() - t0
    finally:
        bar.close()
        checkpointer.close()
        logger.close()
        env.close()
        eval_env.close()
    seconds["total"] = time.perf_counter() - t_start
    return {"env_steps": env_steps, "state": state, "last_eval": last_eval, "seconds": seconds,
            "task_names": spec.task_names}
