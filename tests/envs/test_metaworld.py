"""Tests of the Meta-World backend (``envs/metaworld.py``).

Building a Meta-World benchmark is slow (metaworld draws 50 layouts per task by resetting envs:
MT10 takes several seconds, MT50 about half a minute), so MT10 is built twice in this file, MT50
never, and everything else uses MT1 with short episodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from metaworld.env_dict import MT10_V3

from mtrl_sparse.envs.base import StepResult
from mtrl_sparse.envs.metaworld import (
    METAWORLD_BENCHMARKS,
    MetaWorldVectorEnv,
    metaworld_task_names,
)

STEPS = 10  # episode length used throughout
MT10_ARGS = {"envs_per_task": 2, "seed": 0, "max_episode_steps": STEPS}
MT10_NAMES = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)


@pytest.fixture(scope="module")
def mt10() -> Iterator[MetaWorldVectorEnv]:
    """MT10 with 2 copies per task (20 envs); every test using it starts with ``reset``."""
    env = MetaWorldVectorEnv("MT10", **MT10_ARGS)
    yield env
    env.close()


def _mt1(**kwargs: Any) -> MetaWorldVectorEnv:
    """MT1 "reach-v3" with short episodes; ``kwargs`` override the defaults."""
    args = {"task": "reach-v3", "envs_per_task": 2, "seed": 0, "max_episode_steps": STEPS}
    return MetaWorldVectorEnv("MT1", **{**args, **kwargs})


def _actions(env: MetaWorldVectorEnv, num_episodes: int, seed: int = 0) -> np.ndarray:
    """Random actions, (num_episodes, STEPS, num_envs, 4) float32 in [-1, 1]."""
    shape = (num_episodes, STEPS, env.spec.num_envs, env.spec.action_dim)
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _run_episode(
    env: MetaWorldVectorEnv, actions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, StepResult]:
    """Step a whole episode; returns obs (STEPS, num_envs, 39), rewards (STEPS, num_envs) and the
    last step's result. Checks that the episode ends by truncation on its last step only."""
    obs, rewards = [], []
    for t, action in enumerate(actions):
        result = env.step(action)
        assert not result.terminated.any()
        assert result.truncated.all() == (t == STEPS - 1)
        assert result.truncated.any() == (t == STEPS - 1)
        obs.append(result.obs)
        rewards.append(result.reward)
    return np.stack(obs), np.stack(rewards), result


def _run_episodes(
    env: MetaWorldVectorEnv, actions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``reset`` then several episodes with ``reset_done`` in between; returns initial obs
    (num_episodes, num_envs, 39), obs (num_episodes, STEPS, num_envs, 39), rewards likewise."""
    first_obs, obs, rewards = [env.reset()], [], []
    for episode, episode_actions in enumerate(actions):
        episode_obs, episode_rewards, last = _run_episode(env, episode_actions)
        obs.append(episode_obs)
        rewards.append(episode_rewards)
        if episode < len(actions) - 1:
            first_obs.append(env.reset_done(last.truncated))
    return np.stack(first_obs), np.stack(obs), np.stack(rewards)


# ---------------------------------------------------------------------------- task names


def test_task_names_follow_metaworld_order():
    assert metaworld_task_names("MT10") == MT10_NAMES
    mt50 = metaworld_task_names("MT50")
    assert len(mt50) == len(set(mt50)) == 50
    assert set(MT10_NAMES) <= set(mt50)
    assert metaworld_task_names("MT1", "push-v3") == ("push-v3",)
    assert METAWORLD_BENCHMARKS == ("MT1", "MT10", "MT50", "CW10")
    cw10 = metaworld_task_names("CW10")
    assert cw10[0] == "hammer-v3" and cw10[-1] == "peg-unplug-side-v3"
    assert len(set(cw10)) == 10 and set(cw10) <= set(mt50)


@pytest.mark.parametrize(
    ("benchmark", "task", "listed"),
    [
        ("MT5", None, "MT10"),
        ("mt10", None, "MT50"),
        ("MT1", "no-such-task-v3", "reach-v3"),
        ("MT1", None, "window-close-v3"),
        ("MT10", "reach-v3", "MT1"),
    ],
)
def test_unknown_benchmark_or_task_raises(benchmark: str, task: str | None, listed: str):
    with pytest.raises(ValueError, match=listed) as error:
        metaworld_task_names(benchmark, task)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=listed):
        MetaWorldVectorEnv(benchmark, task=task)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"envs_per_task": 0},
        {"seed": -1},
        {"vector_strategy": "threads"},
        {"max_episode_steps": 0},
        {"max_episode_steps": 501},
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict):
    with pytest.raises(ValueError):
        _mt1(**kwargs)


# ---------------------------------------------------------------------------- MT10


@pytest.mark.slow  # builds MuJoCo environments
def test_spec(mt10: MetaWorldVectorEnv):
    spec = mt10.spec
    assert spec.task_names == MT10_NAMES
    assert spec.obs_shape == (39,)
    assert spec.action_dim == 4
    assert spec.action_kind == "continuous"
    assert spec.envs_per_task == 2
    assert spec.num_envs == 20
    assert spec.max_episode_steps == STEPS


@pytest.mark.slow  # builds MuJoCo environments
def test_envs_are_task_major_and_copies_seeded_apart(mt10: MetaWorldVectorEnv):
    mt10.reset()
    entries = mt10.get_rng_state()["envs"]
    assert len(entries) == 20
    for env, entry in enumerate(entries):
        # metaworld's checkpoint id is "<env class>_<env index>".
        env_class = MT10_V3[MT10_NAMES[env // 2]].__name__
        assert env_class in entry["env_id"]
        assert entry["env_id"].endswith(f"_{env}")
    for copy0, copy1 in zip(entries[0::2], entries[1::2], strict=True):
        assert copy0["rng_state"] != copy1["rng_state"]


@pytest.mark.slow  # builds MuJoCo environments
def test_step_result_shapes_dtypes_and_time_limit(mt10: MetaWorldVectorEnv):
    obs = mt10.reset()
    assert obs.shape == (20, 39) and obs.dtype == np.float32
    actions = _actions(mt10, num_episodes=1)[0]
    for t in range(STEPS):
        result = mt10.step(actions[t])
        assert result.obs.shape == (20, 39) and result.obs.dtype == np.float32
        assert np.isfinite(result.obs).all()
        for flags in (result.terminated, result.truncated, result.success):
            assert flags.shape == (20,) and flags.dtype == np.bool_
        assert result.reward.shape == (20,) and result.reward.dtype == np.float32
        assert not result.terminated.any()
        assert result.truncated.all() == (t == STEPS - 1)
        assert result.truncated.any() == (t == STEPS - 1)


@pytest.mark.slow  # builds MuJoCo environments
def test_reset_done_resets_only_masked_envs(mt10: MetaWorldVectorEnv):
    mt10.reset()
    _, _, last = _run_episode(mt10, _actions(mt10, num_episodes=1)[0])
    np.testing.assert_array_equal(mt10.reset_done(np.zeros(20, dtype=bool)), last.obs)
    done = np.arange(20) % 3 == 0
    obs = mt10.reset_done(done)
    assert obs.shape == (20, 39) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs[~done], last.obs[~done])
    assert all(not np.array_equal(obs[e], last.obs[e]) for e in np.flatnonzero(done))
    mt10.reset_done(~done)  # every episode now restarted: stepping works again
    assert not mt10.step(np.zeros((20, 4), dtype=np.float32)).truncated.any()


@pytest.mark.slow  # builds MuJoCo environments
def test_rng_state_restores_the_following_episode(mt10: MetaWorldVectorEnv):
    actions = _actions(mt10, num_episodes=3, seed=1)
    mt10.reset()
    _, _, result = _run_episode(mt10, actions[0])
    mt10.reset_done(result.truncated)
    _, _, result = _run_episode(mt10, actions[1])
    state = json.loads(json.dumps(mt10.get_rng_state()))
    first_a = mt10.reset_done(result.truncated)
    obs_a, rewards_a, _ = _run_episode(mt10, actions[2])

    other = MetaWorldVectorEnv("MT10", **MT10_ARGS)
    try:
        assert not np.array_equal(other.reset(), first_a)  # without the state: another episode
        other.set_rng_state(state)
        first_b = other.reset()
        obs_b, rewards_b, _ = _run_episode(other, actions[2])
    finally:
        other.close()
    np.testing.assert_array_equal(first_b, first_a)
    np.testing.assert_array_equal(obs_b, obs_a)
    np.testing.assert_array_equal(rewards_b, rewards_a)


@pytest.mark.slow  # builds MuJoCo environments
def test_set_rng_state_rejects_state_of_another_layout(mt10: MetaWorldVectorEnv):
    env = _mt1(envs_per_task=1)
    try:
        with pytest.raises(ValueError):
            env.set_rng_state(mt10.get_rng_state())
    finally:
        env.close()


# ---------------------------------------------------------------------------- MT1


@pytest.mark.slow  # builds MuJoCo environments
def test_same_seed_reproduces_and_other_seed_differs():
    envs = [_mt1(seed=7), _mt1(seed=7), _mt1(seed=8)]
    try:
        actions = _actions(envs[0], num_episodes=3)
        first_a, obs_a, rewards_a = _run_episodes(envs[0], actions)
        first_b, obs_b, rewards_b = _run_episodes(envs[1], actions)
        first_other = envs[2].reset()
    finally:
        for env in envs:
            env.close()
    np.testing.assert_array_equal(first_b, first_a)
    np.testing.assert_array_equal(obs_b, obs_a)
    np.testing.assert_array_equal(rewards_b, rewards_a)
    assert not np.array_equal(first_a[1], first_a[0])  # successive episodes differ
    for env in range(2):
        assert not np.array_equal(first_other[env], first_a[0, env])


@pytest.mark.slow  # builds MuJoCo environments
def test_copies_of_a_task_play_different_episodes():
    env = _mt1(envs_per_task=4)
    try:
        obs = env.reset()
    finally:
        env.close()
    assert env.spec.task_names == ("reach-v3",)
    np.testing.assert_array_equal(env.spec.env_task_ids, np.zeros(4))
    assert len({row.tobytes() for row in obs}) == 4


@pytest.mark.slow  # builds MuJoCo environments
def test_copy_zero_matches_metaworld_gym_make():
    ours = _mt1(envs_per_task=1, seed=3)
    reference = gym.make("Meta-World/MT1", env_name="reach-v3", seed=3, disable_env_checker=True)
    try:
        obs = ours.reset()
        reference_obs, _ = reference.reset()
        np.testing.assert_array_equal(obs[0], reference_obs.astype(np.float32))
        for action in _actions(ours, num_episodes=1)[0]:
            result = ours.step(action)
            reference_obs, reference_reward, *_ = reference.step(action[0])
            np.testing.assert_array_equal(result.obs[0], reference_obs.astype(np.float32))
            assert result.reward[0] == np.float32(reference_reward)
    finally:
        ours.close()
        reference.close()


@pytest.mark.slow  # builds MuJoCo environments
def test_async_matches_sync_and_rewinds():
    sync, async_ = _mt1(), _mt1(vector_strategy="async")
    try:
        actions = _actions(sync, num_episodes=2)
        results = [_run_episodes(env, actions) for env in (sync, async_)]
        state = json.loads(json.dumps(async_.get_rng_state()))
        assert json.loads(json.dumps(sync.get_rng_state())) == state
        done = np.array([True, False])
        np.testing.assert_array_equal(async_.reset_done(done), sync.reset_done(done))
        next_first = async_.reset_done(~done)  # each env's first reset after the snapshot
        async_.set_rng_state(state)
        np.testing.assert_array_equal(async_.reset(), next_first)
    finally:
        sync.close()
        async_.close()
    for sync_array, async_array in zip(*results, strict=True):
        np.testing.assert_array_equal(async_array, sync_array)
