"""Replay buffer: task-major insertion, ring wrap-around, task-balanced sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl_sparse.agents.replay_buffer import (
    Transition,
    add_transitions,
    init_replay_buffer,
    sample_balanced,
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
