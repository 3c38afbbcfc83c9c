"""The device side of a SAC run: the train state and the jit-compiled steps the off-policy run
adapter (``mtrl_sparse.off_policy``) calls.

One vector step of the run is ``act`` (exploration actions for the current observations) and
``learn`` (insert the vector step's transitions into the replay buffer, then
``updates_per_vector_step`` gradient updates, unless still warming up). ``learn`` is two jitted
dispatches, ``insert`` (the buffer donated, written in place) and ``update`` (agent, rng and
non-finite record donated; the buffer only read, a constant of the update scan rather than its
carry). They are separate executables on purpose: compiled as one, XLA fuses the insertion into
the replay-sampling gathers, which then read the buffer as it was before the in-place write, so
it keeps full copies of buffer arrays (with the paper's 1M-transition buffer, two copies each of
``next_obs``, ``rewards`` and ``terminated``, about 330 MB per vector step). ``act`` takes the
train state donated and returns it unchanged but for the rng (no copy: outputs alias inputs).
Each step is compiled once per variant (warm-up and training).

Under a sequential schedule (``sequential``) the envs all run the task being trained
(``SACState.phase``), and acting uses the phase as task id. The replay buffer is either one ring
of the whole capacity holding that task's transitions (the run empties it at every task
boundary, as Continual World's SAC does; every update samples its whole batch from it, and
updates and probes use the phase as task id), or, with ``cumulative_replay``, one ring per task
of ``capacity / tasks`` transitions (``TaskRingsState``) that keeps every task's transitions
seen so far: each update samples uniformly from all of them (a task's share of the batch is its
share of the stored data: APP's cumulative megabatches), each transition with its own task id;
probes read the current task's ring.

A non-finite loss is recorded on the device (update count and which loss) and read by the run
adapter at its logging points, so the hot loop has no extra host round trip.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mtrl_sparse.agents.replay_buffer import (
    ReplayBufferState,
    Transition,
    add_to_task_ring,
    add_transitions,
    init_replay_buffer,
    init_task_rings,
    recent_of_task,
    recent_transitions,
    sample_balanced,
    sample_stored,
)
from mtrl_sparse.agents.sac import SAC, SACState
from mtrl_sparse.config import PlasticityConfig
from mtrl_sparse.envs.base import MultiTaskEnvSpec
from mtrl_sparse.probe import make_sac_probe

LOSS_NAMES = ("critic_loss", "actor_loss", "alpha_loss")


class SACTrainState(struct.PyTreeNode):
    """Everything on the device that a checkpoint must hold.

    Attributes:
        agent: the SAC state (networks, masks, optimizer states, update counter).
        buffer: the replay buffer.
        rng: uint32 (2,) key for exploration, replay sampling and updates.
        first_nonfinite: int32 (2,): (update count, index into LOSS_NAMES) of the first update
            with a non-finite loss, or (-1, -1).
    """

    agent: SACState
    buffer: ReplayBufferState
    rng: jax.Array
    first_nonfinite: jax.Array


class Learner(NamedTuple):
    """Jit-compiled functions over ``SACTrainState``; see the module docstring.

    ``learn`` is ``insert`` then (unless warm-up) ``update``; ``insert(buffer, transitions,
    task)`` (``task`` () int32, the agent's phase: the ring a cumulative replay fills; the other
    buffers ignore it) and
    ``update(agent, rng, first_nonfinite, buffer) -> ((agent, rng, first_nonfinite), metrics)``
    are exposed for benchmarks and HLO checks.
    """

    init: Callable[[int], SACTrainState]
    act: Callable[[SACTrainState, jax.Array, bool], tuple[SACTrainState, jax.Array]]
    learn: Callable[[SACTrainState, Transition, bool], tuple[SACTrainState, dict[str, jax.Array]]]
    insert: Callable[[Any, Transition, jax.Array], Any]
    update: Callable[..., tuple[tuple[SACState, jax.Array, jax.Array], dict[str, jax.Array]]]
    greedy_act: Callable[[SACState, jax.Array, jax.Array], jax.Array]
    probe: Callable[[SACTrainState], dict[str, jax.Array]]
    abstract_state: Callable[[], Any]


def make_learner(
    sac: SAC, spec: MultiTaskEnvSpec, train_env_task_ids: np.ndarray, buffer_capacity: int,
    updates_per_vector_step: int, plasticity: PlasticityConfig, sequential: bool = False,
    cumulative_replay: bool = False,
) -> Learner:
    """Build the train state's initialiser, the jitted act / learn steps and the probe.

    ``spec`` describes every task of the run (the heads, the replay rings, the observation and
    action shapes): under the sequential schedule it is the evaluation envs' spec.
    ``train_env_task_ids`` (N,) is the task of each training env, in ``spec``'s numbering: the
    ids ``act`` acts with, one per observation row (the evaluation envs may run another number
    of copies per task; evaluation acts through ``greedy_act`` with their own ids). Under
    ``sequential`` every training env runs the current phase's task, which replaces them, and
    ``cumulative_replay`` keeps every task's transitions (see the module docstring).
    """
    if cumulative_replay and not sequential:
        raise ValueError("cumulative_replay is for a sequential schedule (a multi-task buffer "
                         "already holds every task)")
    train_env_task_ids = np.asarray(train_env_task_ids, np.int32)
    if train_env_task_ids.ndim != 1 or not np.all((train_env_task_ids >= 0)
                                                  & (train_env_task_ids < spec.num_tasks)):
        raise ValueError(f"train_env_task_ids must be a vector of task ids below "
                         f"{spec.num_tasks}; got {train_env_task_ids!r}")
    env_task_ids = jnp.asarray(train_env_task_ids)
    num_train_envs = len(train_env_task_ids)
    rings = 1 if sequential and not cumulative_replay else spec.num_tasks
    capacity_per_task = buffer_capacity // rings
    samples_per_task = sac.config.batch_size // rings
    probe_per_task = -(-plasticity.batch_size // rings)

    def acting_task_ids(agent: SACState, num_envs: int) -> jax.Array:
        """The task id of each of ``num_envs`` training observations."""
        if num_envs != num_train_envs:
            raise ValueError(f"act takes one observation per training env ({num_train_envs}); "
                             f"got {num_envs}")
        return jnp.full((num_envs,), agent.phase, jnp.int32) if sequential else env_task_ids

    def replay_task_ids(agent: SACState, ring_ids: jax.Array) -> jax.Array:
        """Task ids of sampled transitions from their ring ids: the phase's task where one ring
        holds the current task's transitions, else the ring's."""
        return jnp.full_like(ring_ids, agent.phase) if rings == 1 else ring_ids

    def init_buffer() -> Any:
        make = init_task_rings if cumulative_replay else init_replay_buffer
        return make(rings, capacity_per_task, spec.obs_shape, spec.action_dim)

    def insert(buffer: Any, transitions: Transition, task: jax.Array) -> Any:
        if cumulative_replay:
            return add_to_task_ring(buffer, transitions, task)
        return add_transitions(buffer, transitions)

    def sample(buffer: Any, key: jax.Array) -> tuple[Transition, jax.Array]:
        """A batch and the ring of each transition."""
        if cumulative_replay:
            return sample_stored(buffer, key, sac.config.batch_size)
        return sample_balanced(buffer, key, samples_per_task)

    def recent(buffer: Any, agent: SACState) -> tuple[Transition, jax.Array]:
        if cumulative_replay:
            return recent_of_task(buffer, plasticity.batch_size, agent.phase)
        return recent_transitions(buffer, probe_per_task)

    def init(seed: int) -> SACTrainState:
        agent_key, rng = jax.random.split(jax.random.PRNGKey(seed))
        return SACTrainState(
            agent=sac.init(agent_key),
            buffer=init_buffer(),
            rng=rng,
            first_nonfinite=jnp.full((2,), -1, jnp.int32),
        )

    def act(state: SACTrainState, obs: jax.Array, warmup: bool) -> tuple[SACTrainState, jax.Array]:
        """(N, D) observations -> (N, A) actions: uniform in [-1, 1] in warm-up, else sampled."""
        rng, key = jax.random.split(state.rng)
        if warmup:
            actions = jax.random.uniform(key, (obs.shape[0], spec.action_dim), minval=-1.0,
                                         maxval=1.0)
        else:
            actions = sac.act(state.agent, obs, acting_task_ids(state.agent, obs.shape[0]), key)
        return state.replace(rng=rng), actions

    def one_update(buffer: ReplayBufferState, carry, _):
        agent, rng, first_nonfinite = carry
        rng, sample_key, update_key = jax.random.split(rng, 3)
        batch, ring_ids = sample(buffer, sample_key)
        agent, metrics = sac.update(agent, batch, replay_task_ids(agent, ring_ids), update_key)
        finite = jnp.stack([jnp.isfinite(metrics[name]) for name in LOSS_NAMES])
        record = jnp.stack([agent.step, jnp.argmin(finite).astype(jnp.int32)])
        first_nonfinite = jnp.where(
            (first_nonfinite[0] < 0) & ~jnp.all(finite), record, first_nonfinite
        )
        return (agent, rng, first_nonfinite), metrics

    def update(
        agent: SACState, rng: jax.Array, first_nonfinite: jax.Array, buffer: ReplayBufferState
    ) -> tuple[tuple[SACState, jax.Array, jax.Array], dict[str, jax.Array]]:
        """``updates_per_vector_step`` updates on replay samples; the buffer is only read."""
        carry, metrics = jax.lax.scan(
            functools.partial(one_update, buffer), (agent, rng, first_nonfinite),
            length=updates_per_vector_step,
        )
        return carry, jax.tree.map(lambda x: x[-1], metrics)

    insert_jit = jax.jit(insert, donate_argnums=0)
    update_jit = jax.jit(update, donate_argnums=(0, 1, 2))

    def learn(
        state: SACTrainState, transitions: Transition, warmup: bool
    ) -> tuple[SACTrainState, dict[str, jax.Array]]:
        """Insert one vector step of transitions, then update (unless ``warmup``)."""
        state = state.replace(buffer=insert_jit(state.buffer, transitions, state.agent.phase))
        if warmup:
            return state, {}
        (agent, rng, first_nonfinite), last = update_jit(
            state.agent, state.rng, state.first_nonfinite, state.buffer
        )
        return state.replace(agent=agent, rng=rng, first_nonfinite=first_nonfinite), last

    def greedy_act(agent: SACState, obs: jax.Array, task_ids: jax.Array) -> jax.Array:
        return sac.act(agent, obs, task_ids, jax.random.PRNGKey(0), deterministic=True)

    sac_probe = make_sac_probe(sac, plasticity.dormant_tau, plasticity.srank_delta)

    def probe(state: SACTrainState) -> dict[str, jax.Array]:
        """Plasticity metrics on the most recent transitions; leaves the state unchanged."""
        batch, ring_ids = recent(state.buffer, state.agent)
        return sac_probe(state.agent, batch, replay_task_ids(state.agent, ring_ids),
                         jax.random.fold_in(state.rng, 1))

    return Learner(
        init=jax.jit(init, static_argnums=0),
        act=jax.jit(act, static_argnums=2, donate_argnums=0),
        learn=learn,
        insert=insert_jit,
        update=update_jit,
        greedy_act=jax.jit(greedy_act),
        probe=jax.jit(probe),
        abstract_state=lambda: jax.eval_shape(init, 0),
    )
