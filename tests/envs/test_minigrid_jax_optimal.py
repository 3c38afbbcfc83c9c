"""The JAX shortest-solution search (``envs/minigrid_jax_optimal.py``) against the Farama search
(``envs/minigrid_optimal.py``).

For every task: Farama layouts (fresh resets, and states in the middle of an episode) are
transplanted with ``state_from_farama`` and solved in one jitted, vmapped call; every answer must
equal the Farama search's on the same env (its None is -1). The mid-episode states cover random
walks (drop included, so a DoorKey key can lie elsewhere), states partway along a shortest path,
the changeable door in each of its states with the key carried (DoorKey), RedBlueDoors with the
red door open, MultiRoom with its door open and closed again, Memory with the agent put on its
failure and success cells, and the time limit: the same layout with exactly the steps left that it
needs (solvable) and one fewer (unsolvable).

The fast tier solves about 30 states per task; the slow tier over 200 layouts per task.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import jax
import numpy as np
import pytest

from mtrl_sparse.envs import minigrid_jax as mj
from mtrl_sparse.envs.minigrid_jax_optimal import optimal_steps
from mtrl_sparse.envs.minigrid_optimal import optimal_steps as farama_optimal_steps
from mtrl_sparse.envs.minigrid_optimal import solution_actions

# Farama's minigrid registers the env ids with gymnasium on import
FARAMA = pytest.importorskip("minigrid", reason="needs Farama's minigrid (the farama extra)")

TASKS = tuple(mj.TASK_RULES)
TABLES = mj.task_tables(TASKS)
BATCH = 40  # batches are padded to a multiple of this: one shape per tier gets compiled


@jax.jit
def _solve_batch(states: mj.GridState) -> jax.Array:
    return jax.vmap(functools.partial(optimal_steps, TABLES))(states)


def _solve(states: list[mj.GridState]) -> np.ndarray:
    """``optimal_steps`` of every state, in one jitted vmapped call (padded with the first)."""
    padded = states + [states[0]] * (-len(states) % BATCH)
    batch = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *padded)
    return np.asarray(_solve_batch(batch))[: len(states)]


def _reset(name: str, seed: int):
    env = gym.make(name).unwrapped
    env.reset(seed=seed)
    return env


def _door_states(env) -> np.ndarray:
    """States (open 0, closed 1, locked 2) of every door in the grid."""
    grid = env.grid.encode()
    return grid[grid[..., 0] == mj.DOOR][:, 2]


def _random_walk(name: str, seed: int, steps: int):
    """An env after ``steps`` uniformly random actions (any of the 7), restarting the episode from
    the same reset whenever one ends, so the result is mid-episode."""
    env = _reset(name, seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(mj.NUM_ACTIONS)))
        if terminated or truncated:
            env.reset(seed=seed)
    return env


def _follow_solution(name: str, seed: int, until) -> object:
    """The env of ``seed`` after the actions of its shortest solution up to the first state where
    ``until(env)`` holds (asserted to happen before the last action)."""
    env = _reset(name, seed)
    for action in solution_actions(env)[:-1]:
        env.step(action)
        if until(env):
            return env
    raise AssertionError(f"{name} seed {seed}: the solution never reaches the wanted state")


def _special_envs(name: str, seed: int) -> list:
    """Task-specific mid-episode envs: the changeable door and the key in their other states."""
    if name.startswith("MiniGrid-DoorKey"):
        carried = _follow_solution(name, seed, lambda e: e.carrying is not None)
        assert carried.carrying.type == "key" and list(_door_states(carried)) == [mj.LOCKED]
        opened = _follow_solution(name, seed, lambda e: list(_door_states(e)) == [mj.OPEN])
        assert opened.carrying is not None
        closed = _follow_solution(name, seed, lambda e: list(_door_states(e)) == [mj.OPEN])
        closed.step(mj.TOGGLE)  # the agent still faces the door: close it again
        assert list(_door_states(closed)) == [mj.CLOSED] and closed.carrying is not None
        return [carried, opened, closed]
    if name.startswith("MiniGrid-RedBlueDoors"):
        opened = _follow_solution(name, seed, lambda e: e.red_door.is_open)
        assert not opened.blue_door.is_open
        return [opened]
    if name.startswith("MiniGrid-MultiRoom"):
        opened = _follow_solution(name, seed, lambda e: list(_door_states(e)) == [mj.OPEN])
        closed = _follow_solution(name, seed, lambda e: list(_door_states(e)) == [mj.OPEN])
        closed.step(mj.TOGGLE)
        assert list(_door_states(closed)) == [mj.CLOSED]
        return [opened, closed]
    if name.startswith("MiniGrid-Memory"):
        return _memory_mark_envs(name, seed)
    return []


def _memory_mark_envs(name: str, seed: int) -> list:
    """Memory with the agent put on the failure cell (each direction) and on the success cell:
    states no episode reaches (they end it), but where the rules are sharpest: from the failure
    cell only a forward move that leaves it does not end the episode, from the success cell every
    action is a success."""
    envs = []
    for pos, directions in ((_reset(name, seed).failure_pos, range(4)),
                            (_reset(name, seed).success_pos, [0])):
        for direction in directions:
            env = _reset(name, seed)
            env.agent_pos, env.agent_dir = np.array(pos), direction
            envs.append(env)
    return envs


def _time_limit_envs(name: str, seed: int, optimal: int) -> list:
    """The layout of ``seed`` with exactly ``optimal`` steps left, and with one fewer."""
    envs = []
    for left in (optimal, optimal - 1):
        env = _reset(name, seed)
        env.step_count = env.max_steps - left
        envs.append(env)
    return envs


def _layouts(name: str, seeds: range) -> list:
    """Fresh resets of ``seeds``, random walks, halfway-solved, task-specific and time-limit
    states (the extras on a few seeds of ``seeds``)."""
    envs = [_reset(name, seed) for seed in seeds]
    extra = seeds[:3]
    envs += [_random_walk(name, seed, steps) for seed in extra for steps in (3, 12)]
    for seed in extra:
        path = solution_actions(_reset(name, seed))
        envs.append(_reset(name, seed))
        for action in path[: len(path) // 2]:
            envs[-1].step(action)
    envs += _special_envs(name, extra[0])
    envs += _time_limit_envs(name, extra[0], farama_optimal_steps(_reset(name, extra[0])))
    return envs


def _check_task(name: str, seeds: range) -> None:
    envs = _layouts(name, seeds)
    task = TASKS.index(name)
    expected = np.array([-1 if (n := farama_optimal_steps(env)) is None else n for env in envs])
    got = _solve([mj.state_from_farama(env, task) for env in envs])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected, err_msg=name)
    assert expected[-1] == -1 and expected[-2] > 0  # the time-limit pair


@pytest.mark.parametrize("name", TASKS)
def test_optimal_steps_match_farama_search(name):
    _check_task(name, range(20))


@pytest.mark.slow
@pytest.mark.parametrize("name", TASKS)
def test_optimal_steps_match_farama_search_200_layouts(name):
    _check_task(name, range(1000, 1200))
