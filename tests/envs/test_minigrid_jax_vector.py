"""The JAX MiniGrid vector env: the host interface's contract (as the Farama backend's in
``test_minigrid.py``), and the compiled core's resets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrl_sparse.envs.minigrid import MiniGridVectorEnv, minigrid_task_names
from mtrl_sparse.envs.minigrid_jax_vector import GridVector, JaxMiniGridVectorEnv
from support.optional import needs_farama


def _play(env: JaxMiniGridVectorEnv, actions: np.ndarray, reset: bool = True
          ) -> dict[str, np.ndarray]:
    """Step ``env`` with ``actions`` (T, num_envs), resetting ended envs; stacked outputs."""
    out = {"obs": [env.reset() if reset else None], "reward": [], "done": [], "tasks": []}
    if not reset:
        out["obs"] = []
    for row in actions:
        out["tasks"].append(env.current_task_ids())
        step = env.step(row)
        done = step.terminated | step.truncated
        out["reward"].append(step.reward)
        out["done"].append(done)
        out["obs"].append(env.reset_done(done))
    return {name: np.stack(value) for name, value in out.items()}


def _actions(steps: int, num_envs: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 7, size=(steps, num_envs))


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@needs_farama  # the spec is compared with the Farama vector env's
def test_spec_shapes_and_argument_checks():
    env = JaxMiniGridVectorEnv("MT7", num_envs=3, seed=0)
    farama = MiniGridVectorEnv("MT7", num_envs=3, seed=0)
    assert env.spec == farama.spec
    obs = env.reset()
    assert obs.shape == (3, 7, 7, 3) and obs.dtype == np.float32
    step = env.step(np.array([0, 1, 2]))
    assert step.reward.dtype == np.float32 and step.terminated.dtype == np.bool_
    with pytest.raises(ValueError, match="actions must be"):
        env.step(np.array([0, 1]))
    with pytest.raises(ValueError, match="actions must be in"):
        env.step(np.array([0, 1, 7]))
    with pytest.raises(ValueError, match="num_envs"):
        JaxMiniGridVectorEnv("MT3", num_envs=0)
    with pytest.raises(ValueError, match="unknown MiniGrid benchmark"):
        JaxMiniGridVectorEnv("MT4", num_envs=1)


@pytest.mark.parametrize("backend", [JaxMiniGridVectorEnv,
                                     pytest.param(MiniGridVectorEnv, marks=needs_farama)],
                         ids=["jax", "farama"])
def test_one_task_of_a_benchmark_runs_alone(backend):
    """``task=`` (a single-task run, e.g. a forward-transfer reference): every episode is of
    that task, which is task 0 of a one-task spec with the task's own time limit; a task not
    in the benchmark is refused naming the accepted ones."""
    env = backend("MT7", num_envs=4, seed=2, task="MiniGrid-DoorKey-6x6-v0")
    assert env.spec.task_names == ("MiniGrid-DoorKey-6x6-v0",)
    full = backend("MT7", num_envs=1, seed=0).spec
    assert env.spec.max_steps_per_task == (
        full.max_steps_per_task[full.task_names.index("MiniGrid-DoorKey-6x6-v0")],)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(150):
        step = env.step(rng.integers(0, 7, 4))
        env.reset_done(step.terminated | step.truncated)
        assert set(env.current_task_ids().tolist()) == {0}
    with pytest.raises(ValueError, match="not in MiniGrid MT3.*MiniGrid-MemoryS11-v0"):
        backend("MT3", num_envs=1, task="MiniGrid-DoorKey-6x6-v0")


def test_step_never_resets():
    env = JaxMiniGridVectorEnv("MT3", num_envs=2, seed=1)
    with pytest.raises(RuntimeError, match="must be reset"):
        env.step(np.zeros(2, dtype=np.int64))
    env.reset()
    for _ in range(800):  # RedBlueDoors' time limit is the longest (720)
        step = env.step(np.zeros(2, dtype=np.int64))  # turning left ends no episode early
        if (step.terminated | step.truncated).any():
            break
    tasks = env.current_task_ids()
    with pytest.raises(RuntimeError, match="must be reset"):
        env.step(np.zeros(2, dtype=np.int64))
    np.testing.assert_array_equal(env.current_task_ids(), tasks)


def test_same_seed_same_episodes_and_env_episodes_do_not_depend_on_num_envs():
    actions = _actions(150, 20)
    first = _play(JaxMiniGridVectorEnv("MT7", num_envs=20, seed=7), actions)
    again = _play(JaxMiniGridVectorEnv("MT7", num_envs=20, seed=7), actions)
    _assert_same(first, again)
    other = _play(JaxMiniGridVectorEnv("MT7", num_envs=20, seed=8), actions)
    assert not np.array_equal(first["obs"], other["obs"])
    # 20 envs draw new episodes 8 slots at a time, 3 envs all at once: the same episodes.
    assert GridVector(minigrid_task_names("MT7"), 20).reset_slots == 8
    three = _play(JaxMiniGridVectorEnv("MT7", num_envs=3, seed=7), actions[:, :3])
    _assert_same({k: v[:, :3] for k, v in first.items()}, three)
    assert first["done"].sum() > 10  # resets happened


def test_rng_snapshot_restore_reproduces_following_episodes():
    env = JaxMiniGridVectorEnv("MT7", num_envs=3, seed=11)
    snapshot = env.get_rng_state()
    first = _play(env, _actions(60, 3))
    env.set_rng_state(snapshot)
    _assert_same(first, _play(env, _actions(60, 3)))
    with pytest.raises(ValueError, match="RNG state has 3 envs"):
        JaxMiniGridVectorEnv("MT7", num_envs=2, seed=0).set_rng_state(snapshot)


def test_full_snapshot_continues_episodes_in_progress_exactly():
    env = JaxMiniGridVectorEnv("MT7", num_envs=3, seed=12, compute_optimal=True)
    _play(env, _actions(30, 3, seed=1))
    state = env.get_state()
    optimal = env.episode_optimal_steps()
    after = _play(env, _actions(60, 3, seed=2), reset=False)
    fresh = JaxMiniGridVectorEnv("MT7", num_envs=3, seed=0, compute_optimal=True)
    fresh.set_state(state)
    np.testing.assert_array_equal(fresh.episode_optimal_steps(), optimal)
    _assert_same(after, _play(fresh, _actions(60, 3, seed=2), reset=False))


def test_best_returns_bound_the_returns_of_episodes():
    """Every finished episode's return is at most its layout's best return."""
    env = JaxMiniGridVectorEnv("MT7", num_envs=3, seed=3, compute_optimal=True)
    env.reset()
    best, returns = env.episode_best_returns(), np.zeros(3)
    checked = 0
    for row in _actions(300, 3, seed=4):
        step = env.step(row)
        returns += step.reward
        done = step.terminated | step.truncated
        for e in np.flatnonzero(done):
            assert returns[e] <= best[e] + 1e-6 or np.isnan(best[e])
            checked += 1
        env.reset_done(done)
        returns[done] = 0.0
        best = np.where(done, env.episode_best_returns(), best)
    assert checked > 0
    with pytest.raises(RuntimeError, match="compute_optimal"):
        JaxMiniGridVectorEnv("MT3", num_envs=1).episode_optimal_steps()


def test_reset_where_keeps_the_envs_that_did_not_end():
    core = GridVector(minigrid_task_names("MT7"), 20)
    state, obs = jax.jit(core.init)(jax.random.PRNGKey(1))
    done = jnp.arange(20) % 3 == 0
    new_state, new_obs = jax.jit(core.reset_where)(state, obs, done)
    kept = ~np.asarray(done)
    np.testing.assert_array_equal(np.asarray(new_obs)[kept], np.asarray(obs)[kept])
    np.testing.assert_array_equal(np.asarray(new_state.keys)[kept], np.asarray(state.keys)[kept])
    assert not np.array_equal(np.asarray(new_state.keys)[~kept], np.asarray(state.keys)[~kept])
