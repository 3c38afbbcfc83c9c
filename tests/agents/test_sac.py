"""Multi-task SAC: the mask invariant after every update, bootstrapping, shapes and determinism."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl_sparse.agents.net_state import NetState
from mtrl_sparse.agents.optim import NetworkSetup
from mtrl_sparse.agents.replay_buffer import Transition
from mtrl_sparse.agents.sac import SACConfig, bellman_target, make_sac
from mtrl_sparse.methods.dense import dense
from mtrl_sparse.methods.registry import METHODS
from mtrl_sparse.methods.static import static_sparse
from support.invariants import assert_mask_invariant, assert_trees_equal
from support.method_options import covering_compositions, sac_firing_every_update

NUM_TASKS, OBS_DIM, ACTION_DIM, BATCH = 3, 5, 2, 12
TINY = SACConfig(hidden_sizes=(16, 16), batch_size=BATCH)


def jitted_sac(method: str, distribution: str):
    """init(key, sparsity) and update(state, batch, task_ids, key), compiled once per method
    (and per distribution of a sparse method: a dense network has none)."""
    return _jitted_sac(method, distribution if method != "dense" else "uniform")


@functools.cache
def _jitted_sac(method: str, distribution: str):
    """init(key, sparsity) and update(state, batch, task_ids, key) of ``jitted_sac``.

    The sparsity is a traced argument (as sweeps need it), so hypothesis examples that vary it
    reuse one compilation.
    """

    def build(sparsity):
        m = dense() if method == "dense" else static_sparse(sparsity, distribution)
        return make_sac(TINY, NUM_TASKS, OBS_DIM, ACTION_DIM, NetworkSetup(m), NetworkSetup(m))

    init = jax.jit(lambda key, sparsity: build(sparsity).init(key))
    update = jax.jit(lambda state, batch, task_ids, key: build(0.5).update(
        state, batch, task_ids, key))
    return init, update


@jax.jit
def random_batch(key) -> tuple[Transition, jax.Array]:
    k = jax.random.split(key, 4)
    batch = Transition(
        obs=jax.random.normal(k[0], (BATCH, OBS_DIM)),
        actions=jax.random.uniform(k[1], (BATCH, ACTION_DIM), minval=-1, maxval=1),
        rewards=jax.random.uniform(k[2], (BATCH,), maxval=10),
        next_obs=jax.random.normal(k[3], (BATCH, OBS_DIM)),
        terminated=jnp.zeros(BATCH),
    )
    return batch, jnp.repeat(jnp.arange(NUM_TASKS), BATCH // NUM_TASKS)


@settings(deadline=None)
@given(method=st.sampled_from(["dense", "static"]),
       distribution=st.sampled_from(["uniform", "erk"]),
       sparsity=st.floats(0.05, 0.98), seed=st.integers(0, 2**20), updates=st.integers(1, 4))
def test_mask_invariant_holds_after_every_update(method, distribution, sparsity, seed, updates):
    init, update = jitted_sac(method, distribution)
    state = init(jax.random.PRNGKey(seed), sparsity)
    masks_before = (state.actor.masks, state.critic.masks)
    for i in range(updates):
        batch, task_ids = random_batch(jax.random.PRNGKey(seed + i))
        state, metrics = update(state, batch, task_ids, jax.random.PRNGKey(i))
        for net in (state.actor, state.critic):
            assert_mask_invariant(net)
        # The target critic is a Polyak average of masked critics: zero where masked too.
        assert_mask_invariant(NetState(state.target_critic_params, state.critic.masks, ()))
        assert all(np.all(np.isfinite(np.asarray(v))) for v in metrics.values())
    # static never changes its masks; dense has none.
    assert_trees_equal(masks_before, (state.actor.masks, state.critic.masks))
    if method == "static":
        assert float(metrics["actor_sparsity"]) == pytest.approx(sparsity, abs=0.02)
    else:
        assert float(metrics["actor_sparsity"]) == 0.0
    assert int(state.step) == updates


# Compositions covering every registered method; every event fires at every update.
COMPOSITIONS = covering_compositions()


def test_the_compositions_cover_every_method():
    covered = {part for name in COMPOSITIONS for part in name.split("+")}
    assert set(METHODS) - {"dense"} <= covered


@functools.cache
def jitted_method_sac(name: str):
    """init(key, sparsity) and update(...) of SAC whose networks both run ``name``."""

    def build(sparsity):
        return sac_firing_every_update(name, sparsity, TINY, NUM_TASKS, OBS_DIM, ACTION_DIM)

    sparse = any(METHODS[part].kind == "sparsity" for part in name.split("+"))
    init = jax.jit(lambda key, sparsity: build(sparsity).init(key))
    update = jax.jit(lambda state, batch, task_ids, key: build(0.5 if sparse else 0.0).update(
        state, batch, task_ids, key))
    return init, update, sparse


@settings(deadline=None)
@given(name=st.sampled_from(COMPOSITIONS), sparsity=st.floats(0.05, 0.98),
       seed=st.integers(0, 2**20), updates=st.integers(1, 4))
def test_every_method_keeps_the_mask_invariant_through_its_events(name, sparsity, seed, updates):
    init, update, sparse = jitted_method_sac(name)
    state = init(jax.random.PRNGKey(seed), sparsity if sparse else 0.0)
    for i in range(updates):
        batch, task_ids = random_batch(jax.random.PRNGKey(seed + i))
        state, metrics = update(state, batch, task_ids, jax.random.PRNGKey(i))
        for net in (state.actor, state.critic):
            assert_mask_invariant(net)
        assert all(np.all(np.isfinite(np.asarray(v))) for v in metrics.values())
    if not sparse:
        assert float(metrics["actor_sparsity"]) == 0.0


def test_dense_state_holds_no_masks():
    init, _ = jitted_sac("dense", "erk")
    state = init(jax.random.PRNGKey(0), 0.0)
    assert jax.tree.leaves(state.actor.masks) == []
    assert jax.tree.leaves(state.critic.masks) == []


def test_masked_weights_get_no_gradient_and_stay_zero_under_large_updates():
    init, update = jitted_sac("static", "uniform")
    state = init(jax.random.PRNGKey(1), 0.9)
    batch, task_ids = random_batch(jax.random.PRNGKey(2))
    batch = batch.replace(rewards=batch.rewards * 1e4)  # large losses, large Adam steps
    for i in range(3):
        state, _ = update(state, batch, task_ids, jax.random.PRNGKey(i))
    assert_mask_invariant(state.actor, sparse=True)
    assert_mask_invariant(state.critic, sparse=True)


def test_bellman_target_bootstraps_through_truncation_but_not_termination():
    rewards = jnp.array([1.0, 1.0])
    terminated = jnp.array([1.0, 0.0])  # the second transition was truncated by the time limit
    target = bellman_target(rewards, terminated, jnp.array([50.0, 50.0]), 0.99, 5000.0)
    np.testing.assert_allclose(target, [1.0, 1.0 + 0.99 * 50.0])
    clipped = bellman_target(rewards, jnp.zeros(2), jnp.array([1e6, -1e6]), 0.99, 5000.0)
    np.testing.assert_allclose(clipped, [5000.0, -5000.0])


def test_critic_update_ignores_next_state_only_when_terminated():
    init, update = jitted_sac("dense", "erk")
    state = init(jax.random.PRNGKey(3), 0.0)
    batch, task_ids = random_batch(jax.random.PRNGKey(4))

    def critic_loss(terminated, next_obs):
        b = batch.replace(terminated=jnp.full(BATCH, terminated), next_obs=next_obs)
        return float(update(state, b, task_ids, jax.random.PRNGKey(5))[1]["critic_loss"])

    other = batch.next_obs + 3.0
    assert critic_loss(1.0, batch.next_obs) == critic_loss(1.0, other)
    assert critic_loss(0.0, batch.next_obs) != critic_loss(0.0, other)


def test_act_shapes_bounds_and_per_task_heads():
    init, _ = jitted_sac("dense", "erk")
    state = init(jax.random.PRNGKey(6), 0.0)
    sac = make_sac(TINY, NUM_TASKS, OBS_DIM, ACTION_DIM, NetworkSetup(dense()),
                   NetworkSetup(dense()))
    obs = jnp.ones((NUM_TASKS, OBS_DIM))
    tasks = jnp.arange(NUM_TASKS)
    act = jax.jit(sac.act, static_argnames="deterministic")
    sampled = act(state, obs, tasks, jax.random.PRNGKey(0))
    greedy = act(state, obs, tasks, jax.random.PRNGKey(0), deterministic=True)
    assert sampled.shape == greedy.shape == (NUM_TASKS, ACTION_DIM)
    assert jnp.all(jnp.abs(sampled) <= 1) and jnp.all(jnp.abs(greedy) <= 1)
    # The same observation gives a different action per task: each task reads its own head.
    assert len({tuple(np.round(np.asarray(a), 6)) for a in greedy}) == NUM_TASKS


def test_update_is_deterministic():
    init, update = jitted_sac("static", "erk")
    batch, task_ids = random_batch(jax.random.PRNGKey(7))
    results = []
    for _ in range(2):
        state = init(jax.random.PRNGKey(8), 0.8)
        state, _ = update(state, batch, task_ids, jax.random.PRNGKey(9))
        results.append(state)
    assert_trees_equal(*results)
