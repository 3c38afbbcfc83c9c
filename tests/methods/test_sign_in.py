"""Sign-In (mtrl_sparse.methods.sign_in) and the reparameterised network state it needs: the
balanced split, function-preserving rescaling, regrowth at (m, w) = (1, 0), the mask invariant
with scales, and a sign flip that plain masked training does not reach in the same budget."""

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
    masked_params,
)
from mtrl_sparse.agents.optim import masked_gradient_step
from mtrl_sparse.methods.base import NetworkMethodSettings
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.methods.pruning import install_masks
from mtrl_sparse.methods.registry import MethodOptions
from mtrl_sparse.methods.sign_in import SignInOptions, balanced_split
from mtrl_sparse.methods.sparse_evolution import SETOptions
from support.invariants import assert_mask_invariant
from support.networks import random_mlp_params

SHAPES = {"hidden": (6, 16), "out": (16, 4)}
TX = optax.chain(optax.scale_by_adam(), optax.scale(-1e-2))
EVERY = 5


def random_params(key: jax.Array) -> dict:
    return random_mlp_params(key, SHAPES)


def setup_of(method: str, sparsity: float, beta: float = 1.0):
    options = MethodOptions(sign_in=SignInOptions(beta=beta, rescale_every_updates=EVERY),
                            set=SETOptions(update_every_updates=EVERY))
    return build_network(NetworkMethodSettings(method, sparsity, total_updates=100), options)


@functools.cache
def programs(method: str, sparsity: float, beta: float):
    """Jitted ``new_state(key)`` and ``step(state, update, key)``: the network's gradient step
    on a random linear loss of its effective weights, then its method."""
    setup = setup_of(method, sparsity, beta)

    def new_state(key: jax.Array) -> NetState:
        return create_net_state(random_params(key), TX, setup.method, key,
                                reparameterize=setup.reparameterize)

    def step(state: NetState, update: jax.Array, key: jax.Array) -> NetState:
        direction = random_params(key)

        def loss(weights):
            return sum(jnp.sum(w * d) for w, d in zip(jax.tree.leaves(weights),
                                                       jax.tree.leaves(direction),
                                                       strict=True)), {}

        state, _, _ = masked_gradient_step(state, loss, TX, setup.method, update, key,
                                           MethodContext())
        return state

    return jax.jit(new_state), jax.jit(step)


@given(theta=st.lists(st.floats(-50, 50), min_size=1, max_size=20),
       beta=st.floats(0.1, 4.0))
def test_the_balanced_split_keeps_theta_and_sets_the_balance(theta, beta):
    theta = np.asarray(theta, np.float64)
    m, w = (np.asarray(x) for x in balanced_split(jnp.asarray(theta, jnp.float32), beta))
    assert np.all(m > 0)
    np.testing.assert_allclose(m * w, theta, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m * m - w * w, beta, rtol=1e-4, atol=1e-3)


@settings(deadline=None, max_examples=8)
@given(seed=st.integers(0, 2**16), beta=st.sampled_from([0.5, 1.0, 2.0]))
def test_rescaling_preserves_the_function_and_restores_the_balance(seed, beta):
    """static+sign_in at 60%: each rescaling restores m^2 - w^2 = beta on the active weights
    (which the optimizer steps had unbalanced); the mask invariant (scales 1 and their moments 0
    where masked) after every step. That a rescaling keeps the effective weights is tested
    below."""
    new_state, step = programs("static+sign_in", 0.6, beta)
    key = jax.random.PRNGKey(seed)
    state = new_state(key)
    assert_mask_invariant(state, sparse=True)
    for update in range(1, 2 * EVERY + 1):
        state = step(state, jnp.int32(update), jax.random.fold_in(key, update))
        assert_mask_invariant(state, sparse=True)
        if update % EVERY:
            continue
        assert int(state.method_state["sign_in"]["rescales"]) == update // EVERY
        assert float(state.method_state["sign_in"]["balance_error"]) > 1e-3  # was unbalanced
        for m, w, mask in zip(jax.tree.leaves(state.scales), jax.tree.leaves(
                {n: state.params["params"][n]["kernel"] for n in SHAPES}),
                jax.tree.leaves(state.masks), strict=True):
            m, w, mask = np.asarray(m), np.asarray(w), np.asarray(mask)
            np.testing.assert_allclose((m * m - w * w)[mask], beta, rtol=1e-4, atol=1e-4)


def test_a_rescale_event_changes_no_effective_weight():
    setup = setup_of("static+sign_in", 0.6)
    state = create_net_state(random_params(jax.random.PRNGKey(1)), TX, setup.method,
                             jax.random.PRNGKey(2), reparameterize=setup.reparameterize)
    # Unbalance the pairs with a few optimizer steps that bypass the method.
    for k in range(3):
        grads = apply_masks(random_params(jax.random.PRNGKey(10 + k)), state.masks)
        scale_grads = jax.tree.map(lambda s, g: None if s is None else g, state.scales,
                                   grads, is_leaf=lambda x: x is None)
        state = apply_gradients(state, grads, TX, scale_grads)
    before = masked_params(state)
    after = setup.method.transform(state, jnp.int32(EVERY), jax.random.PRNGKey(0),
                                   MethodContext())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 masked_params(after), before)
    assert int(after.method_state["sign_in"]["rescales"]) == 1
    assert_mask_invariant(after, sparse=True)


def test_regrown_weights_start_at_scale_one_and_zero():
    """A mask change (SET's regrowth) installs (m, w) = (1, 0) with fresh moments at the grown
    positions, and zeroes the dropped ones."""
    setup = setup_of("set+sign_in", 0.7)
    state = create_net_state(random_params(jax.random.PRNGKey(3)), TX, setup.method,
                             jax.random.PRNGKey(4), reparameterize=setup.reparameterize)
    flipped = jax.tree.map(lambda m: None if m is None else ~m, state.masks,
                           is_leaf=lambda x: x is None)
    grown = install_masks(state, flipped, TX)
    assert_mask_invariant(grown, sparse=True)
    for m, w, mask in zip(jax.tree.leaves(grown.scales),
                          [grown.params["params"][n]["kernel"] for n in SHAPES],
                          jax.tree.leaves(grown.masks), strict=True):
        m, w, mask = np.asarray(m), np.asarray(w), np.asarray(mask)
        assert np.all(m[mask] == 1) and np.all(w[mask] == 0)


@pytest.mark.parametrize(("method", "flips"), [("dense", False), ("sign_in", True)])
def test_a_wrong_sign_flips_within_the_budget_only_with_sign_in(method, flips):
    """One weight at theta = -2, loss (theta - 2)^2 / 2, SGD 0.005 for 100 steps: plain training
    moves it as 2 - 4 * 0.995^t (still -0.42 at the end); Sign-In's m * w moves it at
    (m^2 + w^2) = sqrt(1 + 4 theta^2) times that rate and crosses zero."""
    tx = optax.sgd(0.005)
    options = MethodOptions(sign_in=SignInOptions(rescale_every_updates=1))
    setup = build_network(NetworkMethodSettings(method, 0.0, total_updates=100), options)
    params = {"params": {"w": {"kernel": jnp.full((1, 1), -2.0)}}}
    state = create_net_state(params, tx, setup.method, jax.random.PRNGKey(0),
                             reparameterize=setup.reparameterize)

    def loss(weights):
        return 0.5 * jnp.sum(jnp.square(weights["params"]["w"]["kernel"] - 2.0)), {}

    @jax.jit
    def step(state, update):
        return masked_gradient_step(state, loss, tx, setup.method, update,
                                    jax.random.PRNGKey(0), MethodContext())[0]

    for update in range(1, 101):
        state = step(state, jnp.int32(update))
    theta = float(masked_params(state)["params"]["w"]["kernel"][0, 0])
    assert (theta > 0) == flips, theta
    if not flips:
        assert theta == pytest.approx(2 - 4 * 0.995 ** 100, abs=1e-4)
