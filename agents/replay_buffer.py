"""A device-side replay buffer with one ring per task and task-balanced sampling.

Shapes: ``T`` tasks, ``C`` capacity per task, ``E`` envs per task, ``D`` observation size, ``A``
action size, ``K`` samples per task. Envs are task-major (env ``e`` runs task ``e // E``), so a
vector step's transitions reshape to (T, E, ...) and each task's ring receives ``E`` of them.

The buffer lives in the train state and is updated in place when the state is donated to the
jitted step, so it is never copied. Sampling draws the same number of transitions from every task
(128 per task at the reference batch of 1280).

``TaskRingsState`` is the other layout, for a sequential schedule's cumulative replay: the rings
fill one task at a time (each with its own position and size), and sampling draws uniformly from
everything stored, so a task's share of a batch is its share of the data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class Transition(struct.PyTreeNode):
    """A batch of transitions; leading axis N (envs or samples).

    ``next_obs`` is the true next observation (the final one at a time limit), and ``terminated``
    excludes truncation, so that targets bootstrap through time limits.
    """

    obs: jax.Array  # (N, D) float32
    actions: jax.Array  # (N, A) float32
    rewards: jax.Array  # (N,) float32
    next_obs: jax.Array  # (N, D) float32
    terminated: jax.Array  # (N,) float32 in {0, 1}


class ReplayBufferState(struct.PyTreeNode):
    """``data`` leaves have shape (T, C, ...); ``insert_pos`` and ``size`` count per task."""

    data: Transition
    insert_pos: jax.Array  # () int32, next slot of every task's ring
    size: jax.Array  # () int32, filled slots of every task's ring


def init_replay_buffer(
    num_tasks: int, capacity_per_task: int, obs_shape: tuple[int, ...], action_dim: int
) -> ReplayBufferState:
    """An empty buffer of ``num_tasks * capacity_per_task`` transitions (float32 storage)."""
    t, c = num_tasks, capacity_per_task
    data = Transition(
        obs=jnp.zeros((t, c, *obs_shape), jnp.float32),
        actions=jnp.zeros((t, c, action_dim), jnp.float32),
        rewards=jnp.zeros((t, c), jnp.float32),
        next_obs=jnp.zeros((t, c, *obs_shape), jnp.float32),
        terminated=jnp.zeros((t, c), jnp.float32),
    )
    return ReplayBufferState(data=data, insert_pos=jnp.zeros((), jnp.int32),
                             size=jnp.zeros((), jnp.int32))


def add_transitions(buffer: ReplayBufferState, batch: Transition) -> ReplayBufferState:
    """Insert one vector step: ``batch`` leaves have leading axis T * E, task-major."""
    num_tasks, capacity = buffer.data.rewards.shape
    per_task = batch.rewards.shape[0] // num_tasks
    slots = (buffer.insert_pos + jnp.arange(per_task)) % capacity  # (E,)

    def insert(store: jax.Array, new: jax.Array) -> jax.Array:
        return store.at[:, slots].set(new.reshape(num_tasks, per_task, *new.shape[1:]))

    data = jax.tree.map(insert, buffer.data, batch)
    return ReplayBufferState(
        data=data,
        insert_pos=(buffer.insert_pos + per_task) % capacity,
        size=jnp.minimum(buffer.size + per_task, capacity),
    )


def sample_balanced(
    buffer: ReplayBufferState, key: jax.Array, samples_per_task: int
) -> tuple[Transition, jax.Array]:
    """Draw ``samples_per_task`` transitions uniformly (with replacement) from each task's ring.

    Returns the batch with leading axis T * K (task-major) and its task ids, int32 (T * K,).
    """
    num_tasks = buffer.data.rewards.shape[0]
    idx = jax.random.randint(key, (num_tasks, samples_per_task), 0, buffer.size)  # (T, K)
    rows = jnp.arange(num_tasks)[:, None]

    def gather(store: jax.Array) -> jax.Array:
        picked = store[rows, idx]  # (T, K, ...)
        return picked.reshape(num_tasks * samples_per_task, *store.shape[2:])

    task_ids = jnp.repeat(jnp.arange(num_tasks, dtype=jnp.int32), samples_per_task)
    return jax.tree.map(gather, buffer.data), task_ids


def recent_transitions(
    buffer: ReplayBufferState, per_task: int
) -> tuple[Transition, jax.Array]:
    """The ``per_task`` most recently inserted transitions of every task (newest first).

    Returns leading axis T * per_task (task-major) and the task ids. While a ring holds fewer
    than ``per_task`` transitions, its recent ones repeat.
    """
    num_tasks = buffer.data.rewards.shape[0]
    slots = (buffer.insert_pos - 1 - jnp.arange(per_task)) % jnp.maximum(buffer.size, 1)
    rows = jnp.arange(num_tasks)[:, None]

    def gather(store: jax.Array) -> jax.Array:
        return store[rows, slots[None, :]].reshape(num_tasks * per_task, *store.shape[2:])

    task_ids = jnp.repeat(jnp.arange(num_tasks, dtype=jnp.int32), per_task)
    return jax.tree.map(gather, buffer.data), task_ids


# --- task rings filled one task at a time (a sequential schedule's cumulative replay) ---------

class TaskRingsState(struct.PyTreeNode):
    """One ring per task, filled one task at a time: ``data`` leaves (T, C, ...);
    ``insert_pos`` and ``size`` (T,) int32, per ring."""

    data: Transition
    insert_pos: jax.Array
    size: jax.Array


def init_task_rings(
    num_tasks: int, capacity_per_task: int, obs_shape: tuple[int, ...], action_dim: int
) -> TaskRingsState:
    """Empty rings of ``capacity_per_task`` transitions for each of ``num_tasks`` tasks."""
    empty = init_replay_buffer(num_tasks, capacity_per_task, obs_shape, action_dim)
    counts = jnp.zeros((num_tasks,), jnp.int32)
    return TaskRingsState(data=empty.data, insert_pos=counts, size=counts)


def add_to_task_ring(buffer: TaskRingsState, batch: Transition, task: jax.Array
                     ) -> TaskRingsState:
    """Insert ``batch`` (leading axis N <= C, all of task ``task``, () int32) into its ring."""
    capacity = buffer.data.rewards.shape[1]
    count = batch.rewards.shape[0]
    slots = (buffer.insert_pos[task] + jnp.arange(count)) % capacity  # (N,)
    data = jax.tree.map(lambda store, new: store.at[task, slots].set(new), buffer.data, batch)
    return TaskRingsState(
        data=data,
        insert_pos=buffer.insert_pos.at[task].set((buffer.insert_pos[task] + count) % capacity),
        size=buffer.size.at[task].set(jnp.minimum(buffer.size[task] + count, capacity)),
    )


def sample_stored(buffer: TaskRingsState, key: jax.Array, batch_size: int
                  ) -> tuple[Transition, jax.Array]:
    """Draw ``batch_size`` transitions uniformly (with replacement) from everything the rings
    hold, the rings seen as one data set (a task's share of the batch is its share of the
    stored transitions). Returns the batch (leading axis ``batch_size``) and its task ids."""
    ends = jnp.cumsum(buffer.size)  # (T,)
    draws = jax.random.randint(key, (batch_size,), 0, jnp.maximum(ends[-1], 1))
    tasks = jnp.searchsorted(ends, draws, side="right").astype(jnp.int32)
    index = draws - (ends[tasks] - buffer.size[tasks])
    return jax.tree.map(lambda store: store[tasks, index], buffer.data), tasks


def recent_of_task(buffer: TaskRingsState, per_task: int, task: jax.Array
                   ) -> tuple[Transition, jax.Array]:
    """The ``per_task`` most recent transitions of ring ``task`` (newest first; they repeat while
    it holds fewer) and their task ids."""
    slots = (buffer.insert_pos[task] - 1 - jnp.arange(per_task)) % jnp.maximum(
        buffer.size[task], 1)
    return (jax.tree.map(lambda store: store[task, slots], buffer.data),
            jnp.full((per_task,), task, jnp.int32))
