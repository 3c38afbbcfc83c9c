"""Per-layer distributions and rank-threshold masks (mtrl_sparse.methods.topology)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl_sparse.methods.topology import (
    keep_top_scores,
    layer_densities,
    num_to_keep,
    random_masks,
)

# Fixed shape sets keep compilations few: an MLP like SAC's and one with a tiny input layer.
SHAPE_SETS = (
    [(49, 400), (400, 400), (400, 400), (400, 80)],
    [(3, 8), (8, 64), (64, 2)],
)


@settings(deadline=None)
@given(shapes=st.sampled_from(SHAPE_SETS), sparsity=st.floats(0.05, 0.99))
def test_erk_hits_the_overall_target_and_stays_in_unit_interval(shapes, sparsity):
    densities = np.asarray(layer_densities(shapes, sparsity, "erk"))
    sizes = np.array([math.prod(s) for s in shapes])
    assert np.all((densities >= 0) & (densities <= 1))
    overall = 1 - float((densities * sizes).sum() / sizes.sum())
    assert overall == pytest.approx(sparsity, abs=1e-5)


def test_erk_by_hand():
    # Two layers (4, 4) and (4, 2): raw ERK weights (4+4)/16 = 0.5 and (4+2)/8 = 0.75.
    # 50% sparsity keeps 12 of 24 weights: eps * (0.5 * 16 + 0.75 * 8) = 12 -> eps = 6/7.
    densities = np.asarray(layer_densities([(4, 4), (4, 2)], 0.5, "erk"))
    np.testing.assert_allclose(densities, [0.5 * 6 / 7, 0.75 * 6 / 7], rtol=1e-6)


def test_erk_keeps_small_layers_dense_and_resolves_the_rest():
    # The (2, 2) layer's raw weight is 1.0: at 10% sparsity its density would exceed 1.
    shapes = [(2, 2), (100, 100)]
    densities = np.asarray(layer_densities(shapes, 0.1, "erk"))
    assert densities[0] == 1.0
    kept = 0.9 * (4 + 10_000) - 4
    assert densities[1] == pytest.approx(kept / 10_000, rel=1e-6)


def test_uniform_gives_every_layer_the_target():
    np.testing.assert_allclose(layer_densities(SHAPE_SETS[1], 0.8, "uniform"), 0.2, rtol=1e-6)


@settings(deadline=None)
@given(size=st.sampled_from([1, 7, 64, 1000]), fraction=st.floats(0, 1), seed=st.integers(0, 99))
def test_keep_top_scores_keeps_exactly_k_highest(size, fraction, seed):
    scores = jax.random.normal(jax.random.PRNGKey(seed), (size,))
    k = int(round(fraction * size))
    mask = np.asarray(jax.jit(keep_top_scores)(scores, jnp.asarray(k)))
    assert mask.sum() == k
    if 0 < k < size:
        assert np.asarray(scores)[mask].min() >= np.asarray(scores)[~mask].max()


MASKABLE = {"a": {"kernel": True, "bias": False}, "b": {"kernel": True, "bias": False}}


@functools.cache
def _jitted_random_masks(distribution):
    return jax.jit(lambda p, s, k: random_masks(p, MASKABLE, s, distribution, k))


@settings(deadline=None)
@given(sparsity=st.floats(0.0, 0.99), distribution=st.sampled_from(["uniform", "erk"]),
       seed=st.integers(0, 2**16))
def test_random_masks_count_per_layer_and_skip_unmaskable_leaves(sparsity, distribution, seed):
    params = {"a": {"kernel": jnp.ones((8, 64)), "bias": jnp.ones(64)},
              "b": {"kernel": jnp.ones((64, 2)), "bias": jnp.ones(2)}}
    masks = _jitted_random_masks(distribution)(params, sparsity, jax.random.PRNGKey(seed))
    assert masks["a"]["bias"] is None and masks["b"]["bias"] is None
    densities = layer_densities([(8, 64), (64, 2)], sparsity, distribution)
    for layer, density in zip(("a", "b"), densities, strict=True):
        mask = masks[layer]["kernel"]
        assert mask.dtype == jnp.bool_ and mask.shape == params[layer]["kernel"].shape
        assert int(mask.sum()) == int(num_to_keep(density, mask.size))
