"""Tests of the MiniGrid backend (``envs/minigrid.py``) and of the shortest-solution search behind
the normalised return (``envs/minigrid_optimal.py``).

Worker processes are slow to start (a fork server importing MiniGrid), so ``"async"`` envs are
built in three tests only; everything else runs ``"sync"``.
"""

from __future__ import annotations

import copy
import json
import re

import gymnasium as gym
import numpy as np
import pytest

from mtrl_sparse.envs.base import MultiTaskEnvSpec
from mtrl_sparse.envs.minigrid import (
    MINIGRID_BENCHMARKS,
    NUM_ACTIONS,
    UNSOLVABLE,
    MiniGridVectorEnv,
    minigrid_task_names,
)
from mtrl_sparse.envs.minigrid_jax_vector import JaxMiniGridVectorEnv
from mtrl_sparse.envs.minigrid_optimal import (
    SEARCH_ACTIONS,
    best_return,
    normalised_return,
    optimal_steps,
    solution_actions,
)

# Farama's minigrid registers the env ids with gymnasium on import
FARAMA = pytest.importorskip("minigrid", reason="needs Farama's minigrid (the farama extra)")

MT7 = MINIGRID_BENCHMARKS["MT7"]
# MiniGrid's registered time limits of the MT7 tasks (environment-facts.md).
MT7_MAX_STEPS = (196, 720, 605, 360, 252, 324, 40)


def _task_env(name: str, seed: int):
    """An unwrapped MiniGrid env of ``name`` reset with ``seed``."""
    env = gym.make(name).unwrapped
    env.reset(seed=seed)
    return env


def _rollout(env: MiniGridVectorEnv, actions: np.ndarray) -> dict[str, np.ndarray]:
    """Reset, then step through ``actions`` (T, num_envs), resetting finished envs after every
    step; returns the stacked observations, rewards, flags and task ids (leading axis T)."""
    env.reset()
    return _continue(env, actions)


def _continue(env: MiniGridVectorEnv, actions: np.ndarray) -> dict[str, np.ndarray]:
    """``_rollout`` without the first reset: from wherever the envs are."""
    out = {"obs": [], "reward": [], "terminated": [], "truncated": [], "task": []}
    for action in actions:
        out["task"].append(env.current_task_ids())
        result = env.step(action)
        for key in ("obs", "reward", "terminated", "truncated"):
            out[key].append(getattr(result, key))
        env.reset_done(result.terminated | result.truncated)
    return {key: np.stack(values) for key, values in out.items()}


def _assert_same_rollout(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _random_actions(steps: int, num_envs: int, seed: int) -> np.ndarray:
    """Actions (steps, num_envs) biased toward moving forward, so that episodes end often."""
    p = [0.2, 0.2, 0.45, 0.05, 0.0, 0.1, 0.0]  # left right forward pickup drop toggle done
    return np.random.default_rng(seed).choice(NUM_ACTIONS, size=(steps, num_envs), p=p)


# --- task sets and spec ---------------------------------------------------------------------


def test_benchmarks_are_the_papers_task_sets():
    assert MINIGRID_BENCHMARKS["MT3"] == (
        "MiniGrid-LavaGapS7-v0", "MiniGrid-RedBlueDoors-6x6-v0", "MiniGrid-MemoryS11-v0")
    assert MINIGRID_BENCHMARKS["MT5"] == MINIGRID_BENCHMARKS["MT3"] + (
        "MiniGrid-DoorKey-6x6-v0", "MiniGrid-DistShift1-v0")
    assert MINIGRID_BENCHMARKS["MT5"] + (
        "MiniGrid-SimpleCrossingS9N2-v0", "MiniGrid-MultiRoom-N2-S4-v0") == MT7
    with pytest.raises(ValueError, match="MT3"):
        minigrid_task_names("MT10")


def test_spec_describes_per_episode_sampling_and_per_task_time_limits():
    env = MiniGridVectorEnv("MT7", num_envs=3, seed=0)
    spec = env.spec
    assert spec.task_names == MT7
    assert (spec.num_envs, spec.num_tasks, spec.workers, spec.envs_per_task) == (3, 7, 3, 0)
    assert spec.task_sampling == "per_episode"
    assert (spec.obs_shape, spec.action_dim, spec.action_kind) == ((7, 7, 3), 7, "discrete")
    assert spec.max_steps_per_task == MT7_MAX_STEPS
    assert spec.max_episode_steps == 720
    with pytest.raises(ValueError, match="current_task_ids"):
        _ = spec.env_task_ids


def test_spec_validates_task_sampling_fields():
    args = {"task_names": ("a", "b"), "obs_shape": (3,), "action_dim": 2,
            "action_kind": "discrete", "max_episode_steps": 10}
    fixed = MultiTaskEnvSpec(envs_per_task=2, **args)
    assert fixed.num_envs == 4 and fixed.max_steps_per_task == (10, 10)
    np.testing.assert_array_equal(fixed.env_task_ids, [0, 0, 1, 1])
    sampled = MultiTaskEnvSpec(envs_per_task=0, task_sampling="per_episode", workers=5,
                               max_steps_per_task=(4, 10), **args)
    assert sampled.num_envs == 5
    bad = [
        {"envs_per_task": 0},  # fixed needs copies
        {"envs_per_task": 1, "workers": 3},  # fixed has no workers
        {"envs_per_task": 1, "task_sampling": "per_episode", "workers": 2},
        {"envs_per_task": 0, "task_sampling": "per_episode", "workers": 0},
        {"envs_per_task": 1, "max_steps_per_task": (10,)},  # one entry per task
        {"envs_per_task": 1, "max_steps_per_task": (4, 8)},  # max must be max_episode_steps
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            MultiTaskEnvSpec(**args, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"benchmark": "MT4"}, {"num_envs": 0}, {"seed": -1}, {"vector_strategy": "threads"},
     {"vector_strategy": "async", "processes": 3}, {"processes": 1}],
)
def test_constructor_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MiniGridVectorEnv(**{"benchmark": "MT3", "num_envs": 2, **kwargs})


# --- interface -------------------------------------------------------------------------------


def test_shapes_dtypes_and_action_checks():
    env = MiniGridVectorEnv("MT7", num_envs=3, seed=0)
    obs = env.reset()
    assert obs.shape == (3, 7, 7, 3) and obs.dtype == np.float32
    assert np.array_equal(obs, np.round(obs)) and obs.min() >= 0 and obs.max() <= 10
    tasks = env.current_task_ids()
    assert tasks.shape == (3,) and tasks.dtype == np.int32 and ((tasks >= 0) & (tasks < 7)).all()
    result = env.step(np.array([2, 0, 1]))
    assert result.obs.shape == (3, 7, 7, 3) and result.obs.dtype == np.float32
    assert result.reward.shape == (3,) and result.reward.dtype == np.float32
    for flag in (result.terminated, result.truncated, result.success):
        assert flag.shape == (3,) and flag.dtype == np.bool_
    for bad in (np.array([0, 1]), np.array([0.0, 1.0, 2.0]), np.array([0, 7, 1]),
                np.array([-1, 0, 0])):
        with pytest.raises(ValueError):
            env.step(bad)
    with pytest.raises(RuntimeError, match="compute_optimal"):
        env.episode_optimal_steps()


def test_observations_and_rewards_are_minigrids_own():
    """Worker 0's first episode equals a plain MiniGrid env seeded as the module docstring says
    (task drawn with spawn key (0, 0), env seeded with (0, 1 + task)), solved by its shortest path:
    same images, same reward (1 - 0.9 * steps / max_steps) on the terminating step."""
    seed = 5
    env = MiniGridVectorEnv("MT7", num_envs=2, seed=seed)
    obs = env.reset()
    task = int(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, 0))).integers(7))
    assert env.current_task_ids()[0] == task
    plain = gym.make(MT7[task]).unwrapped
    plain.np_random = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0, 1 + task))))
    plain_obs, _ = plain.reset()
    np.testing.assert_array_equal(obs[0], plain_obs["image"])
    path = solution_actions(plain)
    for t, action in enumerate(path):
        result = env.step(np.array([action, 2]))
        plain_obs, reward, terminated, truncated, _ = plain.step(action)
        np.testing.assert_array_equal(result.obs[0], plain_obs["image"])
        assert (result.reward[0], result.terminated[0], result.truncated[0]) == (
            np.float32(reward), terminated, truncated)
        env.reset_done(np.array([False, result.terminated[1] or result.truncated[1]]))
        assert result.terminated[0] == result.success[0] == (t == len(path) - 1)
    assert result.reward[0] == np.float32(best_return(len(path), MT7_MAX_STEPS[task]))


@pytest.mark.parametrize("vector_env", [MiniGridVectorEnv, JaxMiniGridVectorEnv],
                         ids=["farama", "jax"])
def test_task_draws_are_uniform(vector_env):
    """Chi-square of 2,800 task draws over the 7 tasks below its 0.1% critical value (22.46 for
    6 degrees of freedom); a seeded run, so the outcome is fixed. On both backends."""
    env = vector_env("MT7", num_envs=4, seed=1)
    draws = []
    for _ in range(700):
        env.reset()
        draws.append(env.current_task_ids())
    counts = np.bincount(np.concatenate(draws), minlength=7)
    expected = counts.sum() / 7
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 22.46, counts
    # Different envs draw independently: their task sequences differ.
    draws = np.stack(draws)
    assert not any(np.array_equal(draws[:, 0], draws[:, e]) for e in range(1, 4))


def test_step_never_resets_and_tasks_change_only_at_reset():
    env = MiniGridVectorEnv("MT7", num_envs=4, seed=2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4, dtype=np.int64))  # before the first reset
    env.reset()
    tasks = env.current_task_ids()
    for action in _random_actions(2000, 4, seed=0):
        result = env.step(action)
        np.testing.assert_array_equal(env.current_task_ids(), tasks)
        done = result.terminated | result.truncated
        if done.any():
            break
    assert done.any() and not done.all()
    # The final observation stays until reset_done; stepping a finished env is refused.
    np.testing.assert_array_equal(env.reset_done(np.zeros(4, dtype=np.bool_)), result.obs)
    with pytest.raises(RuntimeError, match=re.escape(str(np.flatnonzero(done).tolist()))):
        env.step(np.zeros(4, dtype=np.int64))
    new_obs = env.reset_done(done)
    np.testing.assert_array_equal(new_obs[~done], result.obs[~done])
    np.testing.assert_array_equal(env.current_task_ids()[~done], tasks[~done])
    env.step(np.zeros(4, dtype=np.int64))  # every env may step again


# --- determinism and random state ------------------------------------------------------------


def test_same_seed_same_episodes_and_sync_equals_async():
    actions = _random_actions(150, 3, seed=1)
    first = _rollout(MiniGridVectorEnv("MT7", num_envs=3, seed=7), actions)
    again = _rollout(MiniGridVectorEnv("MT7", num_envs=3, seed=7), actions)
    _assert_same_rollout(first, again)
    assert (first["terminated"] | first["truncated"]).sum() >= 3  # episodes did end and restart
    other = _rollout(MiniGridVectorEnv("MT7", num_envs=3, seed=8), actions)
    assert not np.array_equal(first["obs"], other["obs"])
    env = MiniGridVectorEnv("MT7", num_envs=3, seed=7, vector_strategy="async", processes=2)
    try:
        _assert_same_rollout(first, _rollout(env, actions))
    finally:
        env.close()


def test_worker_episodes_do_not_depend_on_num_envs():
    actions = _random_actions(60, 4, seed=2)
    four = _rollout(MiniGridVectorEnv("MT5", num_envs=4, seed=3), actions)
    two = _rollout(MiniGridVectorEnv("MT5", num_envs=2, seed=3), actions[:, :2])
    _assert_same_rollout({k: v[:, :2] for k, v in four.items()}, two)


def test_rng_snapshot_restore_reproduces_following_episodes():
    """Snapshot (through JSON) after some episodes; the rollout that follows a reset is reproduced
    by restoring the snapshot, in the same env after it moved on and in a fresh async env."""
    warmup, actions = _random_actions(80, 3, seed=3), _random_actions(120, 3, seed=4)
    env = MiniGridVectorEnv("MT7", num_envs=3, seed=11)
    _rollout(env, warmup)
    state = json.loads(json.dumps(env.get_rng_state()))
    following = _rollout(env, actions)
    assert (following["terminated"] | following["truncated"]).sum() >= 3
    _rollout(env, warmup)  # the generators move on
    env.set_rng_state(state)
    _assert_same_rollout(following, _rollout(env, actions))
    fresh = MiniGridVectorEnv("MT7", num_envs=3, seed=0, vector_strategy="async")
    try:
        fresh.set_rng_state(state)
        _assert_same_rollout(following, _rollout(fresh, actions))
    finally:
        fresh.close()
    with pytest.raises(ValueError, match="workers"):
        MiniGridVectorEnv("MT7", num_envs=2, seed=0).set_rng_state(state)


def test_full_snapshot_continues_episodes_in_progress_exactly():
    """A snapshot taken mid-episode (not at a reset) continues identically in the same env after
    it moved on and in a fresh env of another strategy; it carries the current observations."""
    warmup, actions = _random_actions(37, 3, seed=5), _random_actions(120, 3, seed=6)
    env = MiniGridVectorEnv("MT7", num_envs=3, seed=12, compute_optimal=True)
    _rollout(env, warmup)
    state, obs = env.get_state(), env.step(np.zeros(3, int)).obs
    optimal = env.episode_optimal_steps()
    env.reset_done(np.ones(3, bool))
    env.set_state(state)
    assert np.array_equal(env.step(np.zeros(3, int)).obs, obs)
    np.testing.assert_array_equal(env.episode_optimal_steps(), optimal)
    env.set_state(state)
    following = _continue(env, actions)
    assert (following["terminated"] | following["truncated"]).sum() >= 1  # a reset crossed
    fresh = MiniGridVectorEnv("MT7", num_envs=3, seed=0, vector_strategy="async",
                              compute_optimal=True)
    try:
        fresh.set_state(state)
        _assert_same_rollout(following, _continue(fresh, actions))
    finally:
        fresh.close()
    with pytest.raises(ValueError, match="workers"):
        MiniGridVectorEnv("MT7", num_envs=2, seed=0).set_state(state)
    with pytest.raises(ValueError, match="task set"):
        MiniGridVectorEnv("MT3", num_envs=3, seed=0).set_state(state)


# --- shortest solutions and normalised return ------------------------------------------------


def _reference_optimal_steps(env) -> int | None:
    """The search spelled out literally: a deep copy of the env per expansion, states hashed with
    the full grid encoding. Slow (about 0.5 s per layout) but independent of the snapshots."""
    def key(e):
        carrying = None if e.carrying is None else (e.carrying.type, e.carrying.color)
        return (tuple(int(x) for x in e.agent_pos), e.agent_dir, carrying,
                e.grid.encode().tobytes())

    frontier = [copy.deepcopy(env)]
    seen = {key(env)}
    for depth in range(1, env.max_steps - env.step_count + 1):
        next_frontier = []
        for state in frontier:
            for action in SEARCH_ACTIONS:
                child = copy.deepcopy(state)
                _, reward, terminated, _, _ = child.step(action)
                if reward > 0:
                    return depth
                if not terminated and key(child) not in seen:
                    seen.add(key(child))
                    next_frontier.append(child)
        frontier = next_frontier
    return None


@pytest.mark.parametrize("task", MT7)
def test_shortest_solution_replays_to_the_best_return(task):
    """On 3 layouts per task: the path solves a fresh reset of the same seed on its last step
    exactly (reward == best_return(len(path))), the searched env is left untouched, and the length
    equals the literal deep-copy search's (first layout). Random detours followed by a new shortest
    path never beat the first: return / best_return <= 1."""
    for seed in range(3):
        env = _task_env(task, seed)
        before = (tuple(env.agent_pos), env.agent_dir, env.grid.encode().tobytes())
        path = solution_actions(env)
        assert path is not None and optimal_steps(env) == len(path)
        assert (tuple(env.agent_pos), env.agent_dir, env.grid.encode().tobytes()) == before
        if seed == 0:
            assert _reference_optimal_steps(env) == len(path)
        replay = _task_env(task, seed)
        for t, action in enumerate(path):
            _, reward, terminated, truncated, _ = replay.step(action)
            assert terminated == (t == len(path) - 1) and not truncated
        assert reward == best_return(len(path), replay.max_steps)
        for detour_seed in range(4):
            _assert_detour_not_better(task, seed, len(path), detour_seed)


def _assert_detour_not_better(task: str, seed: int, optimal: int, detour_seed: int) -> None:
    """Take 1-6 random actions, then the shortest path from there; if that succeeds, its return
    is at most the best return of ``optimal`` steps."""
    env = _task_env(task, seed)
    rng = np.random.default_rng(detour_seed)
    for action in rng.choice(SEARCH_ACTIONS, size=rng.integers(1, 7)):
        _, reward, terminated, _, _ = env.step(action)
        if terminated:
            assert reward <= best_return(optimal, env.max_steps)
            return
    rest = solution_actions(env)
    if rest is None:
        return
    assert env.step_count + len(rest) >= optimal
    for action in rest:
        _, reward, _, _, _ = env.step(action)
    assert normalised_return(reward, optimal, env.max_steps) <= 1.0
    assert reward == best_return(env.step_count, env.max_steps)


def test_hand_counted_layouts():
    """Empty 5x5: agent at (1, 1) facing right, goal at (3, 3): 4 moves and 1 turn = 5 steps.
    DoorKey 5x5, seed 1 (layout below): pick up the key below, turn left, open the locked door,
    2 moves, turn right, 1 move = 7 steps; a lower bound too (pickup + toggle + 3 moves + 2 turns).
    """
    empty = _task_env("MiniGrid-Empty-5x5-v0", 0)
    assert (tuple(empty.agent_pos), empty.agent_dir) == ((1, 1), 0)
    assert empty.grid.get(3, 3).type == "goal"
    assert optimal_steps(empty) == 5
    doorkey = _task_env("MiniGrid-DoorKey-5x5-v0", 1)
    assert doorkey.pprint_grid() == (
        "WGWGWGWGWG\n"
        "WG  WG  WG\n"
        "WGVVLY  WG\n"
        "WGKYWGGGWG\n"
        "WGWGWGWGWG"
    )
    assert solution_actions(doorkey) == [3, 0, 5, 2, 2, 1, 2]


def test_red_blue_doors_needs_red_first_and_memory_the_matching_object():
    """RedBlueDoors: the path opens the red door before the blue one (blue first is a failure).
    Memory: the path ends next to the object matching the one in the start room."""
    env = _task_env("MiniGrid-RedBlueDoors-6x6-v0", 0)
    opened = []
    for action in solution_actions(env):
        red, blue = env.red_door.is_open, env.blue_door.is_open
        env.step(action)
        opened += ["red"] * (env.red_door.is_open and not red)
        opened += ["blue"] * (env.blue_door.is_open and not blue)
    assert opened == ["red", "blue"]
    for seed in range(4):
        env = _task_env("MiniGrid-MemoryS11-v0", seed)
        for action in solution_actions(env):
            env.step(action)
        assert tuple(env.agent_pos) == env.success_pos != env.failure_pos


def test_vector_env_normalised_returns_never_exceed_one():
    """compute_optimal: every episode's optimal steps are known at its reset (equal in sync and
    async), and the return of every finished episode is at most its best return."""
    actions = _random_actions(1200, 4, seed=5)
    envs = [MiniGridVectorEnv("MT7", num_envs=4, seed=3, compute_optimal=True),
            MiniGridVectorEnv("MT7", num_envs=4, seed=3, vector_strategy="async",
                              compute_optimal=True)]
    try:
        records = [_normalised_returns(env, actions) for env in envs]
    finally:
        envs[1].close()
    assert records[0] == records[1]
    normalised = np.array([r for _, r in records[0]])
    assert len(normalised) >= 15 and (normalised > 0).sum() >= 3  # successes were checked
    assert (normalised <= 1 + 1e-6).all(), normalised.max()


def _normalised_returns(env: MiniGridVectorEnv, actions: np.ndarray) -> list[tuple[int, float]]:
    """(optimal steps, normalised return) of every episode that ends during ``actions``."""
    env.reset()
    records = []
    for action in actions:
        optimal, best = env.episode_optimal_steps(), env.episode_best_returns()
        assert (optimal != UNSOLVABLE).all() and (optimal >= 1).all()
        result = env.step(action)
        done = result.terminated | result.truncated
        # MiniGrid rewards only the last step, so an episode's return is its last reward.
        records += [(int(optimal[e]), float(result.reward[e] / best[e]))
                    for e in np.flatnonzero(done)]
        env.reset_done(done)
    return records
