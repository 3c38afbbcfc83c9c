"""weight_decay and layernorm: declared as data in the registry, applied by the agent builder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrl_sparse.agents.net_state import apply_gradients, create_net_state
from mtrl_sparse.agents.optim import make_optimizer
from mtrl_sparse.agents.sac import SACConfig, make_sac
from mtrl_sparse.methods.base import MethodError, NetworkMethodSettings
from mtrl_sparse.methods.network import build_network, check_network
from mtrl_sparse.methods.registry import MethodOptions
from mtrl_sparse.methods.regularizers import WeightDecayOptions
from support.invariants import assert_mask_invariant

LR = 1e-3


def decay_step(decoupled: bool) -> tuple[np.ndarray, np.ndarray]:
    """One optimizer step with a zero gradient under weight decay 0.1: (before, after) weights."""
    options = MethodOptions(weight_decay=WeightDecayOptions(coefficient=0.1, decoupled=decoupled))
    setup = build_network(NetworkMethodSettings("weight_decay", 0.0), options)
    tx = make_optimizer(LR, 1.0, setup)
    params = {"layer": {"kernel": jnp.array([[2.0, -1.0], [0.5, 0.0]])}}
    state = create_net_state(params, tx, setup.method, jax.random.PRNGKey(0))
    zero = jax.tree.map(jnp.zeros_like, params)
    after = apply_gradients(state, zero, tx)
    return np.asarray(params["layer"]["kernel"]), np.asarray(after.params["layer"]["kernel"])


def test_decoupled_decay_shrinks_weights_by_lr_times_wd():
    before, after = decay_step(decoupled=True)
    np.testing.assert_allclose(after, before * (1 - LR * 0.1), rtol=1e-6)


def test_coupled_decay_goes_through_adam():
    # Coupled L2 adds 0.1 * w to the gradient; Adam's first step normalises it to about lr * sign.
    before, after = decay_step(decoupled=False)
    np.testing.assert_allclose(after, before - LR * np.sign(before), atol=1e-6)


def test_layernorm_adds_unmasked_norm_parameters():
    setup = build_network(NetworkMethodSettings("static+layernorm", 0.5))
    assert setup.layer_norm
    sac = make_sac(SACConfig(hidden_sizes=(8, 8), batch_size=4), 2, 3, 2, setup, setup)
    state = jax.jit(sac.init)(jax.random.PRNGKey(0))
    actor_mlp = state.actor.params["params"]["mlp"]
    assert {"norm_0", "norm_1"} <= actor_mlp.keys()
    masks = state.actor.masks["params"]["mlp"]
    assert masks["norm_0"]["scale"] is None and masks["hidden_0"]["kernel"] is not None


def test_compositions_are_checked():
    # The one check of a network's methods (config validation calls it; builders do not).
    with pytest.raises(MethodError, match="several sparsity methods"):
        check_network(NetworkMethodSettings("static+static", 0.5))
    with pytest.raises(MethodError, match="cannot be combined"):
        check_network(NetworkMethodSettings("dense+weight_decay", 0.0))
    with pytest.raises(MethodError, match="dense but sparsity"):
        check_network(NetworkMethodSettings("weight_decay+layernorm", 0.5))
    check_network(NetworkMethodSettings("static+weight_decay+layernorm", 0.5))
    setup = build_network(NetworkMethodSettings("static+weight_decay+layernorm", 0.5))
    assert setup.layer_norm and len(setup.gradient_transforms) == 1


def test_static_with_weight_decay_keeps_the_mask_invariant():
    setup = build_network(NetworkMethodSettings("static+weight_decay", 0.7))
    tx = make_optimizer(LR, 1.0, setup)
    params = {"layer": {"kernel": jax.random.normal(jax.random.PRNGKey(1), (6, 6))}}
    state = create_net_state(params, tx, setup.method, jax.random.PRNGKey(2))
    grads = {"layer": {"kernel": jnp.ones((6, 6))}}
    mask = state.masks["layer"]["kernel"]
    for _ in range(3):
        state = apply_gradients(state, jax.tree.map(lambda g: g * mask, grads), tx)
    assert_mask_invariant(state, sparse=True)
