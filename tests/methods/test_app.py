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
        before = state.params
        state = apply_gradients(state, apply_masks(dense_grads, state.masks), TX)
        context = MethodContext(grads=apply_masks(dense_grads, state.masks),
                                dense_grads=dense_grads, optimizer=TX, phase=phase,
                                params_before=before)
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
            # Sequential: each layer at its ERK share of the density, each rounded on its own.
            assert abs(int(mask_counts(state.masks)[0]) - density * total) <= len(SHAPES)
        else:
            np.testing.assert_array_equal(current, previous)
        previous = current
        assert int(state.method_state["events"]) == events
    assert abs(int(mask_counts(state.masks)[0]) - (1 - sparsity) * total) <= len(SHAPES)


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


def test_the_saliency_pairs_the_gradient_with_the_weights_it_was_taken_at():
    """The method runs after the step's optimizer update; SNIP's |g * w| takes w before it. With
    g = 1 and the step reversing the order of |w|, the kept half is the half that was largest
    before the step."""
    method = app(NetworkMethodSettings("app", 0.5, total_updates=10),
                 APPOptions(first_density=0.5, megabatches=1))
    before = {"kernel": jnp.array([[4.0, 3.0, 2.0, 1.0]])}
    after = {"kernel": jnp.array([[1.0, 2.0, 3.0, 4.0]])}
    state = create_net_state(after, TX, method, jax.random.PRNGKey(0))
    grads = jax.tree.map(jnp.ones_like, after)
    context = MethodContext(grads=grads, dense_grads=grads, optimizer=TX, params_before=before)
    state = method.transform(state, jnp.int32(1), jax.random.PRNGKey(1), context)
    np.testing.assert_array_equal(state.masks["kernel"], [[True, True, False, False]])


def test_a_target_above_the_first_density_is_refused():
    """APP only prunes: a final density above first_density would leave the schedule flat."""
    with pytest.raises(ValueError, match="--sparsity 0.1 leaves a final density 0.9 above"):
        check_app_run(NetworkMethodSettings("app", 0.1, total_updates=40), APPOptions(),
                      "actor")
    check_app_run(NetworkMethodSettings("app", 0.2, total_updates=40), APPOptions(), "actor")


def test_megabatches_shorter_than_the_saliency_updates_are_refused():
    with pytest.raises(ValueError, match="fewer than --methods.app.saliency-updates 8"):
        check_app_run(NetworkMethodSettings("app", 0.9, total_updates=20, phases=4),
                      APPOptions(saliency_updates=8), "actor")
    check_app_run(NetworkMethodSettings("app", 0.9, total_updates=40),
                  APPOptions(saliency_updates=5), "actor")


HEADS = 3
"""Tasks of the stacked head below: its kernel (16, 3 x 4) holds one (16, 4) layer per task."""
HEAD_SHAPES = {"trunk": (6, 16), "heads": (16, 4 * HEADS)}
HEAD_SLICES = (("heads/kernel", -1, HEADS),)


def megabatch_event(phases: int, density: float, grads_of: str):
    """One APP event (update 1, phase 0) on a trunk and a stacked 3-task head at ``density``
    after it, ``M`` = 1 megabatch (multi-task) or ``phases`` tasks (sequential, first task);
    gradients: ``"task0"``, a standard normal on the trunk and task 0's head slice, zero on the
    other tasks' slices (a first task's data); ``"none"``, zero everywhere. Returns the weights
    and the masks after the event."""
    sparsity = 1.0 - density
    options = APPOptions(first_density=density, megabatches=1, saliency_updates=1)
    settings = NetworkMethodSettings("app", sparsity, total_updates=10 * phases, phases=phases,
                                     layer_slices=HEAD_SLICES)
    method = app(settings, options)
    params = random_mlp_params(jax.random.PRNGKey(3), HEAD_SHAPES)
    state = create_net_state(params, TX, method, jax.random.PRNGKey(4))
    grads = jax.tree.map(jnp.zeros_like, params)
    if grads_of == "task0":
        grads = random_mlp_params(jax.random.PRNGKey(5), HEAD_SHAPES)
        head = grads["params"]["heads"]["kernel"]
        grads["params"]["heads"]["kernel"] = head.at[:, 4:].set(0.0)  # tasks 1 and 2: no data
    context = MethodContext(grads=grads, dense_grads=grads, optimizer=TX, phase=jnp.int32(0),
                            params_before=params)
    state = jax.jit(lambda state: method.transform(state, jnp.int32(1), jax.random.PRNGKey(6),
                                                   context))(state)
    assert int(state.method_state["events"]) == 1
    assert_mask_invariant(state)
    return params["params"], state.masks["params"]


def head_slices(array: jax.Array) -> list[np.ndarray]:
    return [np.asarray(array)[:, 4 * t:4 * (t + 1)] for t in range(HEADS)]


def test_a_sequential_task_keeps_every_layer_and_every_task_slice():
    """The first task of a sequential schedule has data for its own head only: the other tasks'
    head slices score 0. Ranked per layer and task slice, none is emptied (a global ranking
    pruned them to nothing, and at the next task every weight its head feeds), and a slice
    without data keeps its largest weights (ties by |w|, not by position)."""
    params, masks = megabatch_event(phases=3, density=0.3, grads_of="task0")
    trunk = np.asarray(masks["trunk"]["kernel"])
    assert 0 < trunk.mean() < 1
    for task, (mask, weights) in enumerate(zip(head_slices(masks["heads"]["kernel"]),
                                               head_slices(params["heads"]["kernel"]),
                                               strict=True)):
        assert 0 < mask.sum() < mask.size, task
        if task > 0:
            kept, dropped = np.abs(weights[mask]), np.abs(weights[~mask])
            assert kept.min() >= dropped.max(), task


def test_a_global_ranking_breaks_ties_of_saliency_by_magnitude():
    """Multi-task schedule (one global threshold, APP's own): with every saliency 0 (no
    gradient), the kept weights are the largest |w| of the network, wherever they are."""
    params, masks = megabatch_event(phases=1, density=0.3, grads_of="none")
    weights = np.concatenate([np.abs(np.asarray(params[name]["kernel"])).ravel()
                              for name in HEAD_SHAPES])
    kept = np.concatenate([np.asarray(masks[name]["kernel"]).ravel() for name in HEAD_SHAPES])
    assert kept.sum() == round(0.3 * kept.size)
    assert weights[kept].min() >= weights[~kept].max()
