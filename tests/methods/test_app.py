"""APP (mtrl_sparse.methods.app): SNIP saliency, the geometric density schedule, nested global
pruning at every megabatch (a phase of a sequential schedule, or a chunk of a multi-task run),
and the mask invariant after every call, as properties over traced targets and keys."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl_sparse.agents.net_state import (
    MethodContext,
    NetState,
    apply_gradients,
    apply_masks,
    create_net_state,
    mask_counts,
)
from mtrl_sparse.methods.app import (
    APPOptions,
    app,
    check_app_run,
    geometric_density,
    snip_saliency,
)
from mtrl_sparse.methods.base import NetworkMethodSettings
from support.invariants import assert_mask_invariant
from support.networks import random_mlp_params

SHAPES = {"hidden": (6, 16), "out": (16, 4)}
TX = optax.chain(optax.scale_by_adam(), optax.scale(-1e-2))
PHASE_UPDATES = 5


def random_params(key: jax.Array) -> dict:
    return random_mlp_params(key, SHAPES)


def build(sparsity, phases: int, saliency_updates: int, total_updates: int = 100):
    return app(NetworkMethodSettings("app", sparsity, total_updates=total_updates,
                                     phases=phases),
               APPOptions(first_density=0.8, megabatches=4, saliency_updates=saliency_updates))


@functools.cache
def programs(phases: int, saliency_updates: int):
    """Jitted ``new_state(sparsity, key)`` and ``step(state, step, phase, key)``: a masked Adam
    step on random gradients, then APP's transform with those gradients as its context."""

    def new_state(sparsity: jax.Array, key: jax.Array) -> NetState:
        k_params, k_masks = jax.random.split(key)
        return create_net_state(random_params(k_params), TX,
                                build(sparsity, phases, saliency_updates), k_masks)

    def step(state: NetState, update: jax.Array, phase: jax.Array, key: jax.Array) -> NetState:
        dense_grads = random_params(key)
        state = apply_gradients(state, apply_masks(dense_grads, state.masks), TX)
        context = MethodContext(grads=apply_masks(dense_grads, state.masks),
                                dense_grads=dense_grads, optimizer=TX, phase=phase)
        # Built at another target: the transform must read it from the state.
        return build(0.5, phases, saliency_updates).transform(state, update, key, context)

    return jax.jit(new_state), jax.jit(step)


def active_sets(state: NetState) -> np.ndarray:
    return np.concatenate([np.asarray(m).ravel() for m in jax.tree.leaves(state.masks)])


def test_snip_saliency_of_a_toy_linear_model():
    """w = (0.5, -1, 3), x = (1, 2, -1), y = 1, loss (w.x - y)^2 / 2: g = (w.x - y) x =
    -5.5 x, so |g * w| = (2.75, 11, 16.5); an inactive weight ranks below every active one."""
    w, x = jnp.array([0.5, -1.0, 3.0]), jnp.array([1.0, 2.0, -1.0])
    grads = jax.grad(lambda w: 0.5 * (w @ x - 1.0) ** 2)(w)
    masks = {"kernel": jnp.ones(3, bool), "bias": None}
    saliency = snip_saliency({"kernel": w, "bias": 0.0}, {"kernel": grads, "bias": 0.0}, masks)
    np.testing.assert_allclose(saliency["kernel"], [2.75, 11.0, 16.5])
    assert saliency["bias"] is None
    masks["kernel"] = jnp.array([True, True, False])
    saliency = snip_saliency({"kernel": w, "bias": 0.0}, {"kernel": grads, "bias": 0.0}, masks)
    assert saliency["kernel"][2] == -jnp.inf


def test_the_density_schedule_is_the_papers_geometric_one():
    """first 0.8 and target 0.8^4.5 over M megabatches: 0.8^linspace(1, 4.5, M)."""
    for m in (2, 5, 8):
        got = [float(geometric_density(k, m, 0.8, 0.8 ** 4.5)) for k in range(m)]
        np.testing.assert_allclose(got, 0.8 ** np.linspace(1, 4.5, m), rtol=1e-5)
    assert float(geometric_density(0, 1, 0.8, 0.1)) == pytest.approx(0.1)


@settings(deadline=None, max_examples=12)
@given(sparsity=st.floats(0.3, 0.98), saliency_updates=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 2**16))
def test_each_phase_prunes_once_to_its_density_with_nested_masks(sparsity, saliency_updates,
                                                                seed):
    """A sequential schedule of 4 phases of 5 updates: phase k prunes once, after its first
    ``saliency_updates`` updates, to round(d_k x maskable) active weights, keeping a subset of
    the previous mask; the mask invariant holds after every update."""
    new_state, step = programs(4, saliency_updates)
    key = jax.random.PRNGKey(seed)
    state = new_state(jnp.float32(sparsity), key)
    total = mask_counts(state.masks)[1]
    previous, events = active_sets(state), 0
    for update in range(1, 4 * PHASE_UPDATES + 1):
        phase = (update - 1) // PHASE_UPDATES
        state = step(state, jnp.int32(update), jnp.int32(phase), jax.random.fold_in(key, update))
        assert_mask_invariant(state)
        current = active_sets(state)
        assert not np.any(current & ~previous)  # nested: nothing regrows
        at_event = (update - 1) % PHASE_UPDATES == saliency_updates - 1
        if at_event:
            events += 1
            density = 0.8 * ((1 - sparsity) / 0.8) ** (phase / 3)
            assert int(mask_counts(state.masks)[0]) == round(density * total)
        else:
            np.testing.assert_array_equal(current, previous)
        previous = current
        assert int(state.method_state["events"]) == events
    assert int(mask_counts(state.masks)[0]) == round((1 - sparsity) * total)


def test_a_multitask_run_prunes_at_the_start_of_each_of_its_megabatches():
    """100 updates, 4 megabatches: events at updates 1, 26, 51 and 76 (phase stays 0)."""
    new_state, step = programs(1, 1)
    key = jax.random.PRNGKey(0)
    state = new_state(jnp.float32(0.9), key)
    event_updates = []
    for update in range(1, 101):
        before = int(state.method_state["events"])
        state = step(state, jnp.int32(update), jnp.int32(0), jax.random.fold_in(key, update))
        if int(state.method_state["events"]) > before:
            event_updates.append(update)
    assert event_updates == [1, 26, 51, 76]
    assert float(state.method_state["density"]) == pytest.approx(0.1)


def test_megabatches_shorter_than_the_saliency_updates_are_refused():
    with pytest.raises(ValueError, match="fewer than --methods.app.saliency-updates 8"):
        check_app_run(NetworkMethodSettings("app", 0.9, total_updates=20, phases=4),
                      APPOptions(saliency_updates=8), "actor")
    check_app_run(NetworkMethodSettings("app", 0.9, total_updates=40),
                  APPOptions(saliency_updates=5), "actor")
