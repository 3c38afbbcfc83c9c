"""Replay buffer: task-major insertion, ring wrap-around, task-balanced sampling; the task rings
of a sequential schedule's cumulative replay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl_sparse.agents.replay_buffer import (
    TaskRingsState,
    Transition,
    add_to_task_ring,
    add_transitions,
    init_replay_buffer,
    init_task_rings,
    recent_of_task,
    sample_balanced,
    sample_stored,
)


def vector_step(num_tasks: int, envs_per_task: int, step: int) -> Transition:
    """Transitions whose obs encode (task, step) so that samples can be traced to their source."""
    n = num_tasks * envs_per_task
    task = np.repeat(np.arange(num_tasks), envs_per_task).astype(np.float32)
    obs = np.stack([task, np.full(n, step, np.float32), np.tile(np.arange(envs_per_task), num_tasks)
                    .astype(np.float32)], axis=1)
    return Transition(obs=obs, actions=np.zeros((n, 2), np.float32),
                      rewards=task.copy(), next_obs=obs + 1, terminated=np.zeros(n, np.float32))


# Compiled once per shape: eager calls would compile each of their operations separately.
init_buffer = jax.jit(init_replay_buffer, static_argnums=(0, 1, 2, 3))
add = jax.jit(add_transitions)
sample = jax.jit(sample_balanced, static_argnames="samples_per_task")


def filled_buffer(num_tasks, envs_per_task, capacity_per_task, steps):
    buffer = init_buffer(num_tasks, capacity_per_task, (3,), 2)
    for step in range(steps):
        buffer = add(buffer, vector_step(num_tasks, envs_per_task, step))
    return buffer


@settings(deadline=None)
@given(num_tasks=st.sampled_from([1, 3, 10]), envs_per_task=st.sampled_from([1, 2]),
       steps=st.integers(1, 12), seed=st.integers(0, 1000))
def test_sampling_draws_the_same_number_from_every_task_and_only_its_data(
        num_tasks, envs_per_task, steps, seed):
    buffer = filled_buffer(num_tasks, envs_per_task, capacity_per_task=8, steps=steps)
    batch, task_ids = sample(buffer, jax.random.PRNGKey(seed), samples_per_task=16)
    task_ids = np.asarray(task_ids)
    assert task_ids.shape == (num_tasks * 16,)
    np.testing.assert_array_equal(np.bincount(task_ids, minlength=num_tasks), 16)
    obs = np.asarray(batch.obs)
    # Every sample belongs to its task, and comes from a step still in the ring.
    np.testing.assert_array_equal(obs[:, 0], task_ids)
    np.testing.assert_array_equal(np.asarray(batch.rewards), task_ids)
    kept_steps = min(steps, 8 // envs_per_task)
    assert obs[:, 1].min() >= steps - kept_steps
    np.testing.assert_array_equal(np.asarray(batch.next_obs), obs + 1)


def test_ring_wraps_and_size_saturates():
    buffer = filled_buffer(num_tasks=2, envs_per_task=2, capacity_per_task=6, steps=5)
    assert int(buffer.size) == 6 and int(buffer.insert_pos) == (5 * 2) % 6
    stored_steps = sorted(np.asarray(buffer.data.obs)[0, :, 1].tolist())
    assert stored_steps == [2, 2, 3, 3, 4, 4]


def test_sampling_is_uniform_over_filled_slots_only():
    buffer = filled_buffer(num_tasks=1, envs_per_task=1, capacity_per_task=100, steps=4)
    batch, _ = sample(buffer, jax.random.PRNGKey(0), samples_per_task=4000)
    counts = np.bincount(np.asarray(batch.obs)[:, 1].astype(int), minlength=4)
    assert counts.sum() == 4000 and counts.min() > 850  # about 1000 each, never an empty slot
    assert jnp.all(batch.obs[:, 1] < 4)


# --- task rings of a sequential schedule's cumulative replay ---------------------------------

add_to_ring = jax.jit(add_to_task_ring)
sample_all = jax.jit(sample_stored, static_argnums=2)


def task_steps(task: int, steps: int, envs: int, rings: TaskRingsState) -> TaskRingsState:
    """``steps`` vector steps of ``envs`` envs of ``task`` into its ring (obs: task, step)."""
    for step in range(steps):
        one = vector_step(1, envs, step)
        obs = one.obs.copy()
        obs[:, 0] = task
        one = one.replace(obs=obs, rewards=np.full(envs, task, np.float32), next_obs=obs + 1)
        rings = add_to_ring(rings, one, jnp.int32(task))
    return rings


@settings(deadline=None, max_examples=25)
@given(steps=st.lists(st.integers(1, 9), min_size=1, max_size=4), seed=st.integers(0, 1000))
def test_task_rings_keep_every_task_seen_and_sample_them_by_their_share(steps, seed):
    """Tasks filled one after another (``steps[t]`` vector steps of two envs each, rings of 8):
    each ring holds its own task's latest transitions only, the others stay untouched; a batch
    draws from every filled ring in proportion to what it holds, each sample with its own task
    id and from a step still in its ring."""
    rings = jax.jit(init_task_rings, static_argnums=(0, 1, 2, 3))(5, 8, (3,), 2)
    for task, count in enumerate(steps):
        rings = task_steps(task, count, 2, rings)
    sizes = np.minimum(np.array(steps) * 2, 8)
    np.testing.assert_array_equal(rings.size, [*sizes, *[0] * (5 - len(steps))])
    batch, task_ids = sample_all(rings, jax.random.PRNGKey(seed), 4000)
    task_ids, obs = np.asarray(task_ids), np.asarray(batch.obs)
    np.testing.assert_array_equal(obs[:, 0], task_ids)
    np.testing.assert_array_equal(np.asarray(batch.rewards), task_ids)
    assert set(task_ids.tolist()) == set(range(len(steps)))
    shares = np.bincount(task_ids, minlength=len(steps)) / 4000
    np.testing.assert_allclose(shares, sizes / sizes.sum(), atol=0.04)
    for task, count in enumerate(steps):
        assert obs[task_ids == task, 1].min() >= count - min(count, 4)  # 8 slots = 4 steps
    recent, recent_ids = recent_of_task(rings, 3, jnp.int32(len(steps) - 1))
    np.testing.assert_array_equal(recent_ids, len(steps) - 1)
    assert np.asarray(recent.obs)[0, 1] == steps[-1] - 1  # newest first
