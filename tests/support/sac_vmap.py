"""Vmapped SAC runs against separate runs: the check of the design page's vmap promise
(docs/pages/design.md), shared by the
tests of the built-in methods (test_vmap) and of a method registered from outside (plugin test).

Runs that differ only in seed and target sparsity vmap into one program: the step counter is
shared (unbatched), so event conditions stay real branches; the target sparsity is array data in
the method state, so it can differ across the vmapped runs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mtrl_sparse.agents.replay_buffer import Transition
from mtrl_sparse.agents.sac import SACConfig, SACState
from support.invariants import assert_trees_close, stack_trees
from support.method_options import sac_firing_every_update

NUM_TASKS, OBS_DIM, ACTION_DIM, BATCH = 2, 4, 2, 8
TINY = SACConfig(hidden_sizes=(16, 16), batch_size=BATCH)
SEEDS, SPARSITIES = (0, 1), (0.5, 0.9)


def sac_for(method: str, compute_density: float | None = None):
    """sparsity -> SAC whose networks run ``method`` with every event at every update
    (``compute_density``: sparse compute, see ``NetworkMethodSettings``)."""
    return functools.partial(sac_firing_every_update, method, config=TINY, num_tasks=NUM_TASKS,
                             obs_dim=OBS_DIM, action_dim=ACTION_DIM,
                             compute_density=compute_density)


@jax.jit
def batch_for(seed) -> tuple[Transition, jax.Array]:
    """A random batch of transitions and its task ids for ``seed`` (compiled once)."""
    k = jax.random.split(jax.random.PRNGKey(100 + seed), 4)
    batch = Transition(
        obs=jax.random.normal(k[0], (BATCH, OBS_DIM)),
        actions=jax.random.uniform(k[1], (BATCH, ACTION_DIM), minval=-1, maxval=1),
        rewards=jax.random.uniform(k[2], (BATCH,)),
        next_obs=jax.random.normal(k[3], (BATCH, OBS_DIM)),
        terminated=jnp.zeros(BATCH),
    )
    return batch, jnp.repeat(jnp.arange(NUM_TASKS), BATCH // NUM_TASKS)


def vmapped_and_separate_runs(method: str, compute_density: float | None = None
                              ) -> tuple[list[SACState], SACState]:
    """Two updates of SAC running ``method`` (events at every update) for each (seed, target
    sparsity): run one by one, and vmapped in one program. Returns (separate final states, the
    vmapped final states)."""
    build = sac_for(method, compute_density)
    runs = [(seed, sparsity) for seed in SEEDS for sparsity in SPARSITIES]

    def init(seed, sparsity):
        return build(sparsity).init(jax.random.PRNGKey(seed))

    def update(sparsity, state, batch, task_ids, key):
        return build(sparsity).update(state, batch, task_ids, key)

    # Separate runs: each its own init and updates (one compilation each, sparsity traced).
    init_alone, update_alone = jax.jit(init), jax.jit(update)
    separate = []
    for seed, sparsity in runs:
        sparsity = jnp.float32(sparsity)
        state = init_alone(seed, sparsity)
        for i in range(2):
            batch, task_ids = batch_for(seed + 10 * i)
            state, _ = update_alone(sparsity, state, batch, task_ids, jax.random.PRNGKey(seed + i))
        separate.append(state)

    # One program: init vmapped over (seed, sparsity), update vmapped with the step unbatched.
    seeds = jnp.array([s for s, _ in runs])
    sparsities = jnp.array([p for _, p in runs], jnp.float32)
    states = jax.jit(jax.vmap(init))(seeds, sparsities)
    axes = SACState(actor=0, critic=0, target_critic_params=0, log_alpha=0, step=None,
                    phase=None, target_critic_index=0)
    states = states.replace(step=states.step[0], phase=states.phase[0])
    # The method reads the target sparsity from the (batched) state: one update serves every run.
    vmapped = jax.jit(jax.vmap(functools.partial(update, 0.5), in_axes=(axes, 0, 0, 0),
                               out_axes=(axes, 0)))
    for i in range(2):
        batch, tasks = stack_trees([batch_for(seed + 10 * i) for seed, _ in runs])
        keys = stack_trees([jax.random.PRNGKey(seed + i) for seed, _ in runs])
        states, _ = vmapped(states, batch, tasks, keys)
    return separate, states


def assert_vmapped_equals_separate(method: str) -> list[SACState]:
    """The vmapped runs of ``method`` end where the separate runs end (params, masks, optimizer
    and method state); returns the separate final states."""
    separate, states = vmapped_and_separate_runs(method)
    for index, single in enumerate(separate):
        batched = jax.tree.map(lambda x, i=index: x[i], states.replace(step=None, phase=None))
        assert_trees_close(single.replace(step=None, phase=None), batched, rtol=2e-5, atol=2e-6)
        masks = jax.tree.leaves(single.actor.masks)
        np.testing.assert_array_equal(
            np.concatenate([np.asarray(m).ravel() for m in masks]),
            np.concatenate([np.asarray(m).ravel() for m in jax.tree.leaves(batched.actor.masks)]))
    assert int(states.step) == 2
    return separate
