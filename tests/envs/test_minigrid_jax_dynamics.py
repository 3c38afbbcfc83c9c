"""Parity of the JAX MiniGrid dynamics with Farama's ``minigrid`` (the reference backend).

For every task: Farama episodes are played with a fixed action sequence, and each episode's
initial state is transplanted into a ``GridState`` (``state_from_farama``); the JAX ``step`` and
``observe`` then replay the same actions. Observations, rewards, ``terminated`` and ``truncated``
must be identical at every step. Half of the episodes follow a shortest solution (from the Farama
search) with 10% of its actions replaced by random ones, so that successes, door openings and key
pickups are exercised, not only random wandering; the other half are uniformly random.

The fast tier checks 600 steps per task in episodes cut after 60 steps (many layouts); the slow
tier (run in CI) at least 10,000 steps per task in whole episodes (time limits included).
"""

from __future__ import annotations

import functools

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrl_sparse.envs import minigrid_jax as mj
from mtrl_sparse.envs.minigrid_optimal import solution_actions

# every test steps Farama's envs beside the JAX ones; importing minigrid registers their ids
FARAMA = pytest.importorskip("minigrid", reason="needs Farama's minigrid (the farama extra)")

TASKS = tuple(mj.TASK_RULES)


def _farama_episodes(name: str, task: int, min_steps: int, seed: int,
                     cut_after: int | None = None) -> list[dict]:
    """Farama episodes of ``name`` until ``min_steps`` steps in total: each a dict with the
    transplanted initial ``state``, ``actions`` and Farama's ``obs``, ``reward``, ``terminated``,
    ``truncated`` after every action. ``cut_after``: stop recording an episode after that many
    steps (then reset), so that a short test sees many layouts; None plays every episode out."""
    env = gym.make(name).unwrapped
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    episodes, total = [], 0
    while total < min_steps:
        initial = mj.state_from_farama(env, task)
        plan = solution_actions(env) if len(episodes) % 2 else None
        plan = list(plan or [])
        record = {"state": initial, "actions": [], "obs": [], "reward": [], "terminated": [],
                  "truncated": []}
        while True:
            if plan and rng.random() >= 0.1:
                action = plan.pop(0)
            else:
                action = int(rng.integers(mj.NUM_ACTIONS))
                plan = plan[1:]
            obs, reward, terminated, truncated, _ = env.step(action)
            record["actions"].append(action)
            record["obs"].append(obs["image"])
            record["reward"].append(np.float32(reward))
            record["terminated"].append(terminated)
            record["truncated"].append(truncated)
            if terminated or truncated or len(record["actions"]) == cut_after:
                break
        total += len(record["actions"])
        episodes.append(record)
        env.reset()
    return episodes


@functools.partial(jax.jit, static_argnums=0)
def _replay(task_names: tuple[str, ...], initial: mj.GridState, actions: jax.Array):
    """Replay ``actions`` (episodes, T) from ``initial`` (a batch of episodes) with the JAX env;
    returns observations (episodes, T, 7, 7, 3), rewards, terminated, truncated (episodes, T)."""
    tables = mj.task_tables(task_names)
    see_through = jnp.asarray(tables.see_through_walls)

    def episode(state, episode_actions):
        def one(state, action):
            state, reward, terminated, truncated = mj.step(tables, state, action)
            obs = mj.observe(state, see_through[state.task])
            return state, (obs, reward, terminated, truncated)

        return jax.lax.scan(one, state, episode_actions)[1]

    return jax.vmap(episode)(initial, actions)


def _check_task(task: int, min_steps: int, seed: int, cut_after: int | None = None) -> int:
    """Assert parity on ``task``'s episodes; returns the number of steps compared."""
    name = TASKS[task]
    episodes = _farama_episodes(name, task, min_steps, seed, cut_after)
    length = max(len(e["actions"]) for e in episodes)
    # Pad every episode to the longest (padding steps are not compared).
    actions = np.full((len(episodes), length), mj.DONE, dtype=np.int32)
    valid = np.zeros((len(episodes), length), dtype=bool)
    for i, e in enumerate(episodes):
        actions[i, : len(e["actions"])] = e["actions"]
        valid[i, : len(e["actions"])] = True
    initial = jax.tree.map(lambda *xs: jnp.stack(xs), *[e["state"] for e in episodes])
    obs, reward, terminated, truncated = map(np.asarray, _replay(TASKS, initial, actions))
    for i, e in enumerate(episodes):
        n = len(e["actions"])
        for field, got in (("obs", obs), ("reward", reward), ("terminated", terminated),
                           ("truncated", truncated)):
            want = np.asarray(e[field])
            same = (got[i, :n] == want).reshape(n, -1).all(axis=1)
            if not same.all():
                t = int(np.argmin(same))
                raise AssertionError(f"{name}: episode {i} step {t} (action "
                                     f"{e['actions'][t]}): {field} differs:\n{got[i, t]}\n"
                                     f"Farama:\n{want[t]}")
    return int(valid.sum())


@pytest.mark.parametrize("task", range(len(TASKS)), ids=[n.split("-")[1] for n in TASKS])
def test_dynamics_match_farama_short(task):
    assert _check_task(task, min_steps=600, seed=100 + task, cut_after=60) >= 600


@pytest.mark.slow
@pytest.mark.parametrize("task", range(len(TASKS)), ids=[n.split("-")[1] for n in TASKS])
def test_dynamics_match_farama_10k_steps(task):
    assert _check_task(task, min_steps=10_000, seed=task) >= 10_000


def test_successes_and_pickups_are_exercised():
    """The solution-following episodes reach successes (rewards > 0) in every task, so reward
    parity is tested on real successes, not only on zeros."""
    for task, name in enumerate(TASKS):
        episodes = _farama_episodes(name, task, min_steps=600, seed=100 + task, cut_after=60)
        assert any(max(e["reward"]) > 0 for e in episodes), name
