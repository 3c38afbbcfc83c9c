"""sparse_tune (mtrl_sparse.methods.sparse_tune): the first task trains densely; at a task
boundary the network is frozen while it is scored, then only the top-sensitivity entries of
each tensor train, each update kept with probability p; frozen entries stay bit-identical."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax import tree_utils

from mtrl_sparse.agents.net_state import MethodContext, NetState, apply_gradients, create_net_state
from mtrl_sparse.agents.optim import NetworkSetup, make_optimizer
from mtrl_sparse.methods.base import MethodError, NetworkMethodSettings
from mtrl_sparse.methods.network import check_network
from mtrl_sparse.methods.sparse_tune import (
    ENTRY,
    SparseTuneOptions,
    check_sparse_tune_run,
    top_per_tensor,
)
from support.networks import random_mlp_params

SHAPES = {"hidden": (64, 128), "out": (128, 32)}
OPTIONS = SparseTuneOptions(score_updates=8)
PHASE_UPDATES = 10


def random_params(key: jax.Array) -> dict:
    return random_mlp_params(key, SHAPES)


@functools.cache
def programs(options: SparseTuneOptions = OPTIONS):
    """Jitted ``new_state(key)`` and ``step(state, update, phase, key)``: one optimizer step on
    random gradients (the network's own chain, with the method's freeze), then the method."""
    settings = NetworkMethodSettings("sparse_tune", 0.0, total_updates=100, phases=3)
    method = ENTRY.build(settings, options)
    before, after = ENTRY.optimizer(options)
    tx = make_optimizer(1e-2, None, NetworkSetup(method, gradient_transforms=before,
                                                 update_transforms=after))

    def new_state(key: jax.Array) -> NetState:
        return create_net_state(random_params(key), tx, method, key)

    def step(state: NetState, update: jax.Array, phase: jax.Array, key: jax.Array) -> NetState:
        grads = random_params(key)
        state = apply_gradients(state, grads, tx)
        context = MethodContext(grads=grads, dense_grads=grads, optimizer=tx, phase=phase)
        return method.transform(state, update, key, context)

    return jax.jit(new_state), jax.jit(step)


def flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tree)])


def test_frozen_entries_stay_bit_identical_and_the_updated_fraction_matches():
    new_state, step = programs()
    key = jax.random.PRNGKey(0)
    state = new_state(key)
    size = flat(state.params).size
    update = 0

    def advance(count: int, phase: int) -> list[NetState]:
        nonlocal state, update
        states = []
        for _ in range(count):
            update += 1
            state = step(state, jnp.int32(update), jnp.int32(phase),
                         jax.random.fold_in(key, update))
            states.append(state)
        return states

    # Task 0: dense training, every entry changes every step.
    first = flat(state.params)
    advance(PHASE_UPDATES, 0)
    assert np.mean(flat(state.params) != first) > 0.99
    # Task 1: its first update still trains densely; then frozen for the 8 scored updates.
    advance(1, 1)
    frozen_at = flat(state.params)
    scoring = advance(OPTIONS.score_updates - 1, 1)
    for s in scoring:
        np.testing.assert_array_equal(flat(s.params), frozen_at)
    assert int(state.method_state["tunings"]) == 1
    # The chosen subset: the top 5% of each tensor by the accumulated squared gradients.
    scale = tree_utils.tree_get(state.opt_state, "sparse_tune_scale")
    expected = top_per_tensor(state.method_state["fisher"], OPTIONS.trainable_fraction)
    np.testing.assert_array_equal(flat(scale), flat(expected))
    for leaf in jax.tree.leaves(scale):
        assert int(leaf.sum()) == max(round(0.05 * leaf.size), 1)
    trainable = flat(scale) > 0
    chosen = flat(state.params)
    fractions = [float(s.method_state["updated_fraction"]) for s in advance(200, 1)]
    after = flat(state.params)
    np.testing.assert_array_equal(after[~trainable], chosen[~trainable])
    assert np.mean(after[trainable] != chosen[trainable]) > 0.99  # 200 draws of p = 0.1
    expected_fraction = trainable.sum() * OPTIONS.update_probability / size
    assert expected_fraction < 0.01
    assert np.mean(fractions) == pytest.approx(expected_fraction, rel=0.1)


def test_without_task_boundaries_sparse_tune_is_refused():
    with pytest.raises(MethodError, match="acts at task boundaries.*--schedule sequential"):
        check_network(NetworkMethodSettings("sparse_tune", 0.0, total_updates=100), None,
                      "actor")
    check_network(NetworkMethodSettings("sparse_tune", 0.0, total_updates=100, phases=3))
    with pytest.raises(MethodError, match="scales"):
        check_network(NetworkMethodSettings("sparse_tune+sign_in", 0.0, total_updates=100,
                                            phases=3))
    with pytest.raises(ValueError, match="score-updates 8"):
        check_sparse_tune_run(NetworkMethodSettings("sparse_tune", 0.0, total_updates=24,
                                                    phases=3), OPTIONS, "critic")
