"""Evaluation protocols: success rate on fixed-task envs, normalised return on per-episode tasks.

Both run on separate evaluation envs and always start from the same environment random state, so
evaluations differ only through the policy (and a resumed run evaluates exactly as an
uninterrupted one). Both return an ``eval/...`` row with per-task fields ``eval/success/<task>``
and the mean ``eval/success_rate``; an episode succeeds when the task's success flag was 1 at any
of its steps (docs/pages/design.md, Conventions).

- ``evaluate_success`` (Meta-World: each env bound to one task, several copies per task): the
  copies of a task play their episodes in parallel; the first ``episodes_per_task`` finished
  episodes of each task count. Adds the mean return.
- ``evaluate_normalized_return`` (MiniGrid: a task drawn per episode): the first
  ``episodes_per_task`` episodes *started* on each task count (not the first to finish, which
  would favour short episodes); each episode's return is divided by the best achievable return
  of its own layout, so 1 is a shortest-path solution.
- ``make_compiled_normalized_return`` (MiniGrid on the JAX backend): the same score as one
  compiled program: ``episodes_per_task`` episodes of every task, their layouts fixed by the
  run's evaluation seed, all played at once until every one has ended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from mtrl_sparse.envs import minigrid_jax as mj
from mtrl_sparse.envs.base import MultiTaskVectorEnv
from mtrl_sparse.envs.minigrid import UNSOLVABLE
from mtrl_sparse.envs.minigrid_jax_vector import GridVector
from mtrl_sparse.envs.minigrid_optimal import best_return


class PerEpisodeTaskEnv(MultiTaskVectorEnv, Protocol):
    """A vector env that draws a task per episode and knows each episode's best return."""

    def episode_best_returns(self) -> np.ndarray: ...


def evaluate_success(
    policy: Callable[[Any, jax.Array, jax.Array], jax.Array],
    agent_state: Any,
    env: MultiTaskVectorEnv,
    episodes_per_task: int,
    env_rng_state: Any,
) -> dict[str, float]:
    """Run ``episodes_per_task`` episodes of every task with ``policy(agent_state, obs, tasks)``.

    Returns ``eval/success_rate``, ``eval/mean_return`` (means over tasks) and
    ``eval/success/<task>``.
    """
    spec = env.spec
    task_ids = spec.env_task_ids
    episodes_per_env = -(-episodes_per_task // spec.envs_per_task)  # ceil
    env.set_rng_state(env_rng_state)
    obs = env.reset()

    finished = np.zeros(spec.num_envs, np.int64)
    episode_success = np.zeros(spec.num_envs, bool)
    episode_return = np.zeros(spec.num_envs, np.float64)
    results: list[list[tuple[bool, float]]] = [[] for _ in range(spec.num_envs)]
    while np.any(finished < episodes_per_env):
        actions = np.asarray(policy(agent_state, obs, task_ids))
        step = env.step(actions)
        episode_success |= step.success
        episode_return += step.reward
        done = step.terminated | step.truncated
        for e in np.flatnonzero(done):
            if finished[e] < episodes_per_env:
                results[e].append((bool(episode_success[e]), float(episode_return[e])))
            finished[e] += 1
        episode_success[done] = False
        episode_return[done] = 0.0
        obs = env.reset_done(done) if done.any() else step.obs

    success = np.zeros(spec.num_tasks)
    returns = np.zeros(spec.num_tasks)
    for task in range(spec.num_tasks):
        episodes = [r for e in np.flatnonzero(task_ids == task) for r in results[e]]
        episodes = episodes[:episodes_per_task]
        success[task] = np.mean([s for s, _ in episodes])
        returns[task] = np.mean([g for _, g in episodes])
    row = {"eval/success_rate": float(np.mean(success)),
           "eval/mean_return": float(np.mean(returns))}
    row.update({f"eval/success/{n}": float(s) for n, s in zip(spec.task_names, success,
                                                                strict=True)})
    return row


def evaluate_normalized_return(
    policy_step: Callable[..., tuple[jax.Array, Any, Any]], weights: Any,
    env: PerEpisodeTaskEnv, episodes_per_task: int, key: jax.Array, deterministic: bool,
) -> dict[str, float]:
    """Normalised return and success of the first ``episodes_per_task`` episodes started on each
    task, acting with ``policy_step(weights, obs, task_ids, key, t, deterministic)`` at vector
    step ``t``; the env's random state is restored afterwards, so every evaluation sees the same
    episodes. An unsolvable layout (no finite best return) is left out of its task's mean.

    Returns ``eval/normalized_return`` and ``eval/success_rate`` (means over tasks) and
    ``eval/normalized_return/<task>``, ``eval/success/<task>``.
    """
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
            if episode_index[e] < episodes_per_task:
                normalized = returns[e] / best[e] if np.isfinite(best[e]) else np.nan
                results[tasks[e]][int(episode_index[e])] = (normalized, bool(step.success[e]))
        if done.any():
            obs = env.reset_done(done)
            start(np.flatnonzero(done))
        else:
            obs = step.obs
        t += 1
    env.set_rng_state(rng_state)

    chosen = [[per_task[i] for i in range(episodes_per_task)] for per_task in results]
    return normalized_return_row(spec.task_names, {
        "normalized_return": [np.nanmean([r for r, _ in episodes]) for episodes in chosen],
        "success": [np.mean([s for _, s in episodes]) for episodes in chosen]})


def step_episodes(
    core: GridVector, act_with: Callable[..., tuple[jax.Array, Any, Any]], weights: Any,
    envs: mj.GridState, obs: jax.Array, tasks: jax.Array, key: jax.Array, deterministic: bool,
    ended: jax.Array,
) -> tuple[mj.GridState, jax.Array, jax.Array, jax.Array, jax.Array]:
    """One step of every episode of ``envs`` (a ``GridVector``'s states, env ``e`` running task
    ``tasks[e]``) with the policy ``act_with(weights, obs, tasks, key, deterministic)`` on
    ``obs``; the episodes already ``ended`` stay as they were. Returns (envs, reward,
    terminated, truncated, live), the last four (num_envs,), ``live`` the episodes that stepped."""
    actions, _, _ = act_with(weights, obs.astype(jnp.float32), tasks, key, deterministic)
    stepped, reward, terminated, truncated = jax.vmap(
        lambda env, action: mj.step(core.tables, env, action))(envs, actions)
    live = ~ended

    def keep_ended(new, old):
        return jnp.where(live.reshape(live.shape + (1,) * (new.ndim - 1)), new, old)

    return jax.tree.map(keep_ended, stepped, envs), reward, terminated, truncated, live


def make_compiled_normalized_return(
    act_with: Callable[..., tuple[jax.Array, Any, Any]], task_names: tuple[str, ...],
    episodes_per_task: int, deterministic: bool,
) -> Callable[[Any, jax.Array, jax.Array], dict[str, jax.Array]]:
    """``evaluate(weights, key, layout_key)``: the normalised return and success of
    ``episodes_per_task`` episodes of every task, as one jit-able (and vmap-able) function.

    Episode ``i`` of task ``t`` is env ``t * episodes_per_task + i`` of a ``GridVector`` whose
    layouts come from ``layout_key`` (fixed per run, so every evaluation sees the same episodes);
    all episodes run together, the policy ``act_with(weights, obs, task_ids, key_t,
    deterministic)`` acting with ``fold_in(key, t)`` at step ``t``, until every episode has ended
    (an ended episode is frozen). Returns ``normalized_return`` and ``success``, each (num_tasks,)
    float32 (an unsolvable layout is left out of its task's mean, as in
    ``evaluate_normalized_return``).
    """
    num_tasks = len(task_names)
    core = GridVector(task_names, num_tasks * episodes_per_task, compute_optimal=True)
    tasks = jnp.repeat(jnp.arange(num_tasks, dtype=jnp.int32), episodes_per_task)
    max_steps = jnp.asarray(core.tables.max_steps)[tasks]

    def evaluate(weights: Any, key: jax.Array, layout_key: jax.Array) -> dict[str, jax.Array]:
        envs, optimal = core.episodes_of(layout_key, tasks)

        def play(carry):
            envs, obs, returns, ended, success, t = carry
            envs, reward, terminated, truncated, live = step_episodes(
                core, act_with, weights, envs, obs, tasks, jax.random.fold_in(key, t),
                deterministic, ended)
            return (envs, core.observe(envs), returns + jnp.where(live, reward, 0.0),
                    ended | terminated | truncated, success | (live & terminated & (reward > 0)),
                    t + 1)

        start = (envs, core.observe(envs), jnp.zeros(tasks.shape), jnp.zeros(tasks.shape, bool),
                 jnp.zeros(tasks.shape, bool), jnp.int32(0))
        _, _, returns, _, success, _ = jax.lax.while_loop(
            lambda carry: ~carry[3].all(), play, start)
        solvable = optimal != UNSOLVABLE
        best = best_return(optimal.astype(jnp.float32), max_steps.astype(jnp.float32))
        normalized = jnp.where(solvable, returns / jnp.where(solvable, best, 1.0), 0.0)
        per_task = (num_tasks, episodes_per_task)
        counted = solvable.reshape(per_task).sum(axis=1)
        return {"normalized_return": jnp.where(counted > 0, normalized.reshape(per_task).sum(1)
                                               / jnp.maximum(counted, 1), jnp.nan),
                "success": success.reshape(per_task).mean(axis=1)}

    return evaluate


def normalized_return_row(task_names: tuple[str, ...], scores: dict[str, Any]
                          ) -> dict[str, float]:
    """The ``eval/...`` row of ``make_compiled_normalized_return``'s per-task scores (the fields
    of ``evaluate_normalized_return``)."""
    norm, success = (np.asarray(scores[name], dtype=np.float64)
                     for name in ("normalized_return", "success"))
    row = {f"eval/normalized_return/{n}": float(v) for n, v in zip(task_names, norm, strict=True)}
    row.update({f"eval/success/{n}": float(v) for n, v in zip(task_names, success, strict=True)})
    row["eval/normalized_return"] = float(np.mean(norm))
    row["eval/success_rate"] = float(np.mean(success))
    return row
