"""Per-layer sparsity distributions and masks from scores, with the sparsity as traced data.

The common pipeline of every sparsity method: scores -> per-layer target densities -> masks.
The target sparsity may be a traced value (so that runs differing only in it can be vmapped into
one program), so the number of weights a layer keeps is traced as well and masks come from a rank
threshold (``keep_top_scores``), never from ``lax.top_k`` with a static k.

Layers: every maskable leaf is a layer, except a leaf that stacks the layers of several tasks
(a multi-task network's per-task heads computed as one kernel): ``LayerSlices`` name such leaves,
and each of their ``count`` equal slices along ``axis`` is then a layer of its own, with its own
target, threshold and drop/regrow counts, as the per-task heads of the paper's lineage are separate
layers (``map_layers``).

Distributions:
- ``uniform``: every maskable layer gets the target sparsity.
- ``erk``: Erdos-Renyi-Kernel (Mocanu et al. 2018; Evci et al. 2020): density of a layer is
  proportional to sum(shape) / prod(shape); layers whose density would exceed 1 are kept dense and
  the scale is solved again for the rest, so the overall sparsity equals the target exactly (up to
  rounding to whole weights).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from mtrl_sparse.agents.tree_paths import path_str
from mtrl_sparse.agents.trees import is_none

Distribution = Literal["uniform", "erk"]
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "erk")

LayerSlices = tuple[tuple[str, int, int], ...]
"""Leaves that stack several layers: ``(path ending, axis, count)`` each, e.g.
``("task_heads/head_hidden/kernel", -1, 3)``: the kernel's last axis holds 3 tasks' layers."""


def leaf_slices(path: tuple, layer_slices: LayerSlices) -> tuple[int, int] | None:
    """``(axis, count)`` of the leaf at ``path`` (a ``jax.tree_util`` path) if it stacks
    layers, else None."""
    return named_leaf_slices(path_str(path), layer_slices)


def named_leaf_slices(name: str, layer_slices: LayerSlices) -> tuple[int, int] | None:
    """``leaf_slices`` of the leaf named ``name`` ("params/task_heads/heads/kernel")."""
    for ending, axis, count in layer_slices:
        if name == ending or name.endswith("/" + ending):
            return axis, count
    return None


FREE = -1
"""``task_index`` of an entry no single task owns (the trunk's)."""


def task_index(params: Any, task_leaves: LayerSlices) -> Any:
    """Per parameter entry, the task that owns it: slice ``t`` along the axis of a leaf named in
    ``task_leaves`` (``NetworkMethodSettings.task_leaves``) is task ``t``'s, every other entry
    is ``FREE``; int32 trees of the params' shapes."""
    def index(path: tuple, leaf: jax.Array) -> jax.Array:
        slices = leaf_slices(path, task_leaves)
        if slices is None:
            return jnp.full(leaf.shape, FREE, jnp.int32)
        axis, count = slices
        tasks = jnp.repeat(jnp.arange(count, dtype=jnp.int32), leaf.shape[axis] // count)
        shape = [1] * leaf.ndim
        shape[axis] = leaf.shape[axis]
        return jnp.broadcast_to(tasks.reshape(shape), leaf.shape)
    return jax.tree_util.tree_map_with_path(index, params)


def split_layers(x: jax.Array, axis: int, count: int) -> jax.Array:
    """(..., count * n along ``axis``, ...) -> (count, n, the other axes...): one row per layer."""
    moved = jnp.moveaxis(x, axis, 0)
    return moved.reshape(count, moved.shape[0] // count, *moved.shape[1:])


def join_layers(layers: jax.Array, axis: int, shape: tuple[int, ...]) -> jax.Array:
    """The inverse of ``split_layers`` for a leaf of ``shape``."""
    moved = layers.reshape(layers.shape[0] * layers.shape[1], *layers.shape[2:])
    return jnp.moveaxis(moved, 0, axis % len(shape))


def map_layers(fn: Any, slices: tuple[int, int] | None, arrays: tuple[jax.Array, ...],
               per_layer: tuple[jax.Array, ...] = ()) -> jax.Array:
    """``fn(*arrays, *per_layer)`` on a leaf that is one layer; on a leaf stacking layers
    (``slices``), ``fn`` on each layer's slice of ``arrays`` with that layer's entry of each
    ``per_layer`` value (a scalar, or one value per layer: (count,)), vmapped, the slices put back
    together. ``fn`` returns an array shaped like its first argument."""
    if slices is None:
        return fn(*arrays, *per_layer)
    axis, count = slices
    split = [split_layers(a, axis, count) for a in arrays]
    values = [jnp.broadcast_to(jnp.asarray(v), (count,)) for v in per_layer]
    return join_layers(jax.vmap(fn)(*split, *values), axis, arrays[0].shape)


def layer_shapes(leaves_with_paths: list[tuple[tuple, jax.Array]],
                 layer_slices: LayerSlices) -> list[tuple[int, ...]]:
    """The shape of every layer of the maskable leaves given as (path, leaf): a leaf stacking
    ``count`` layers gives ``count`` shapes (the slice's: the sliced axis first)."""
    shapes = []
    for path, leaf in leaves_with_paths:
        slices = leaf_slices(path, layer_slices)
        if slices is None:
            shapes.append(tuple(leaf.shape))
            continue
        axis, count = slices
        rest = [d for i, d in enumerate(leaf.shape) if i != axis % leaf.ndim]
        shapes.extend([(leaf.shape[axis] // count, *rest)] * count)
    return shapes


def masked_leaves_with_paths(masks: Any) -> list[tuple[tuple, jax.Array]]:
    """(path, mask) of every masked leaf of a mask tree (None leaves skipped), in tree order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)
    return [(path, m) for path, m in flat if m is not None]


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


def leaves_and_layer_densities(
    params: Any, maskable: Any, sparsity: jax.Array | float, distribution: Distribution,
    layer_slices: LayerSlices, eager: bool = False,
) -> tuple[list, Any, list[bool], jax.Array]:
    """(the (path, leaf) pairs of ``params``, its treedef, the maskable flag of each leaf, the
    target density of every layer of the maskable leaves in order: ``layer_densities``, computed
    outside any trace with ``eager``)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    flags = jax.tree.leaves(maskable)
    maskable_leaves = [(path, p) for (path, p), f in zip(flat, flags, strict=True) if f]
    shapes = layer_shapes(maskable_leaves, layer_slices)
    with jax.ensure_compile_time_eval() if eager else contextlib.nullcontext():
        return flat, treedef, flags, layer_densities(shapes, sparsity, distribution)


def planned_leaf_densities(
    params: Any, maskable: Any, sparsity: Any, distribution: Distribution,
    layer_slices: LayerSlices = (),
) -> Any:
    """The tree of ``params`` with each maskable leaf's target density as a Python float (the
    largest of its layers'; None elsewhere), or None when ``sparsity`` is traced (unknown
    until run time, as in runs vmapped over sparsities)."""
    if isinstance(sparsity, jax.core.Tracer):
        return None
    flat, treedef, flags, layer_targets = leaves_and_layer_densities(
        params, maskable, float(sparsity), distribution, layer_slices, eager=True)
    densities = iter(np.asarray(layer_targets).tolist())
    planned = []
    for (path, _), f in zip(flat, flags, strict=True):
        slices = leaf_slices(path, layer_slices)
        planned.append(max(next(densities) for _ in range(1 if slices is None else slices[1]))
                       if f else None)
    return jax.tree_util.tree_unflatten(treedef, planned)


def keep_top_scores(scores: jax.Array, num_keep: jax.Array,
                    tie_break: jax.Array | None = None) -> jax.Array:
    """Boolean mask keeping the ``num_keep`` highest scores of ``scores``; equal scores rank by
    ``tie_break`` (higher first; shaped like ``scores``), then by position.

    ``num_keep`` may be traced; the mask comes from each entry's rank, not from a static top-k.
    """
    flat = scores.reshape(-1)
    if tie_break is None:
        order = jnp.argsort(-flat, stable=True)
    else:  # lexsort: the last key is the primary one; stable, so remaining ties by position
        order = jnp.lexsort((-tie_break.reshape(-1).astype(jnp.float32), -flat))
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return (ranks < num_keep).reshape(scores.shape)


def num_to_keep(density: jax.Array, size: int) -> jax.Array:
    """Whole number of weights kept for a layer of ``size`` weights at ``density``."""
    return jnp.round(density * size).astype(jnp.int32)


def keep_top_per_layer(scores: jax.Array, slices: tuple[int, int] | None,
                       densities: Iterator[jax.Array], tie_break: jax.Array | None = None
                       ) -> jax.Array:
    """The mask of a leaf keeping, in each of its layers, the round(density x size) highest
    ``scores`` (equal ones by ``tie_break``, see ``keep_top_scores``): one layer, or the
    ``count`` layers a leaf stacks (``slices``), each layer taking the next density of
    ``densities`` (the layers' targets, in ``layer_shapes`` order)."""
    count = 1 if slices is None else slices[1]
    leaf_densities = jnp.stack([next(densities) for _ in range(count)])
    per_layer = (leaf_densities if slices else leaf_densities[0],)
    if tie_break is None:
        return map_layers(lambda s, d: keep_top_scores(s, num_to_keep(d, s.size)), slices,
                          (scores,), per_layer)
    return map_layers(lambda s, t, d: keep_top_scores(s, num_to_keep(d, s.size), t), slices,
                      (scores, tie_break), per_layer)


def random_masks(
    params: Any, maskable: Any, sparsity: jax.Array | float, distribution: Distribution,
    key: jax.Array, layer_slices: LayerSlices = (),
) -> Any:
    """A random sparse topology: per layer, a uniformly random subset of the scheduled size.

    Returns masks congruent with ``params``: bool arrays on maskable leaves, None elsewhere. A leaf
    stacking layers (``layer_slices``) gets its count per layer.
    """
    flat, treedef, flags, layer_targets = leaves_and_layer_densities(
        params, maskable, sparsity, distribution, layer_slices)
    densities = iter(layer_targets)
    keys = iter(jax.random.split(key, max(sum(flags), 1)))
    masks = []
    for (path, p), f in zip(flat, flags, strict=True):
        if not f:
            masks.append(None)
            continue
        masks.append(keep_top_per_layer(jax.random.uniform(next(keys), p.shape),
                                        leaf_slices(path, layer_slices), densities))
    return jax.tree_util.tree_unflatten(treedef, masks)


def no_masks(params: Any) -> Any:
    """The masks of a dense network: None at every leaf."""
    return jax.tree.map(lambda _: None, params)
