"""Per-layer sparsity distributions and masks from scores, with the sparsity as traced data.

The common pipeline of every sparsity method: scores -> per-layer target densities -> masks.
The target sparsity may be a traced value (so that runs differing only in it can be vmapped into
one program), so the number of weights a layer keeps is traced as well and masks come from a rank
threshold (``keep_top_scores``), never from ``lax.top_k`` with a static k.

Distributions:
- ``uniform``: every maskable layer gets the target sparsity.
- ``erk``: Erdos-Renyi-Kernel (Mocanu et al. 2018; Evci et al. 2020): density of a layer is
  proportional to sum(shape) / prod(shape); layers whose density would exceed 1 are kept dense and
  the scale is solved again for the rest, so the overall sparsity equals the target exactly (up to
  rounding to whole weights).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp

Distribution = Literal["uniform", "erk"]
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "erk")


def layer_densities(
    shapes: list[tuple[int, ...]], sparsity: jax.Array | float, distribution: Distribution
) -> jax.Array:
    """Target density (fraction of weights kept) of each maskable layer, float32 (L,).

    ``shapes`` are the maskable leaves' shapes; ``sparsity`` is the network's overall target.
    """
    sparsity = jnp.asarray(sparsity, jnp.float32)
    sizes = jnp.array([math.prod(s) for s in shapes], jnp.float32)
    if distribution == "uniform":
        return jnp.full(sizes.shape, 1.0 - sparsity)
    if distribution != "erk":
        raise ValueError(f"unknown distribution {distribution!r}; accepted: {DISTRIBUTIONS}")
    raw = jnp.array([sum(s) / math.prod(s) for s in shapes], jnp.float32)
    kept_total = (1.0 - sparsity) * jnp.sum(sizes)
    dense = jnp.zeros(sizes.shape, bool)
    for _ in shapes:  # at most one layer becomes dense per round
        budget = kept_total - jnp.sum(jnp.where(dense, sizes, 0.0))
        scale = budget / jnp.sum(jnp.where(dense, 0.0, raw * sizes))
        dense = dense | (scale * raw > 1.0)
    budget = kept_total - jnp.sum(jnp.where(dense, sizes, 0.0))
    scale = budget / jnp.maximum(jnp.sum(jnp.where(dense, 0.0, raw * sizes)), 1e-12)
    return jnp.where(dense, 1.0, jnp.clip(scale * raw, 0.0, 1.0))


def keep_top_scores(scores: jax.Array, num_keep: jax.Array) -> jax.Array:
    """Boolean mask keeping the ``num_keep`` highest scores of ``scores`` (ties by position).

    ``num_keep`` may be traced; the mask comes from each entry's rank, not from a static top-k.
    """
    flat = scores.reshape(-1)
    order = jnp.argsort(-flat, stable=True)
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return (ranks < num_keep).reshape(scores.shape)


def num_to_keep(density: jax.Array, size: int) -> jax.Array:
    """Whole number of weights kept for a layer of ``size`` weights at ``density``."""
    return jnp.round(density * size).astype(jnp.int32)


def random_masks(
    params: Any, maskable: Any, sparsity: jax.Array | float, distribution: Distribution,
    key: jax.Array,
) -> Any:
    """A random sparse topology: per layer, a uniformly random subset of the scheduled size.

    Returns masks congruent with ``params``: bool arrays on maskable leaves, None elsewhere.
    """
    leaves, treedef = jax.tree.flatten(params)
    flags = jax.tree.leaves(maskable)
    shapes = [p.shape for p, f in zip(leaves, flags, strict=True) if f]
    densities = layer_densities(shapes, sparsity, distribution)
    keys = iter(jax.random.split(key, max(len(shapes), 1)))
    layer = iter(range(len(shapes)))
    masks = []
    for p, f in zip(leaves, flags, strict=True):
        if not f:
            masks.append(None)
            continue
        i = next(layer)
        scores = jax.random.uniform(next(keys), p.shape)
        masks.append(keep_top_scores(scores, num_to_keep(densities[i], p.size)))
    return jax.tree.unflatten(treedef, masks)


def no_masks(params: Any) -> Any:
    """The masks of a dense network: None at every leaf."""
    return jax.tree.map(lambda _: None, params)
