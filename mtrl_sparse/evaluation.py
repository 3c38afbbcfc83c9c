"""Policy evaluation on a separate vector env with several copies of each task.

An episode succeeds when the task's success flag was 1 at any of its steps (DESIGN.md,
Conventions). Each task's copies play their episodes in parallel; the first ``episodes_per_task``
finished episodes of each task count. Every evaluation starts from the same environment random
state, so evaluations differ only through the policy (and a resumed run evaluates exactly as an
uninterrupted one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from mtrl_sparse.envs.base import MultiTaskVectorEnv


def evaluate(
    policy: Callable[[Any, jax.Array, jax.Array], jax.Array],
    agent_state: Any,
    env: MultiTaskVectorEnv,
    episodes_per_task: int,
    env_rng_state: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``episodes_per_task`` episodes of every task with ``policy(agent_state, obs, tasks)``.

    Returns (success rate per task, mean episode return per task), float64 (T,) each.
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
    return success, returns
