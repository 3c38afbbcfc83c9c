"""Magnitude pruning, drop-and-regrow and mask installation: what GMP, SET and RigL share.

Every function works leaf by leaf on trees congruent with the params, where a mask leaf of None
marks a leaf that is never masked (left alone). Numbers of weights to keep may be traced (they
follow a traced target sparsity or a scheduled drop fraction), so masks come from rank thresholds
(``keep_top_scores``), never from a top-k of static size.

- ``prune_layers`` / ``prune_globally``: keep the largest-magnitude active weights so that each
  layer (by a uniform or ERK distribution of the network's sparsity) or the whole network has a
  given sparsity; inactive weights are never revived. Leaves stacking several tasks' layers count
  as those layers (``topology.LayerSlices``).
- ``drop_and_regrow``: per layer, drop the smallest-magnitude active weights and grow as many of
  the weights that were inactive before the drop, chosen by a grow score (random for SET, gradient
  magnitude for RigL), so the number of active weights per layer stays constant.
- ``install_masks``: replace the masks; weights that left or joined the active set are zeroed (a
  regrown weight starts at zero) and their optimizer moments reset.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from mtrl_sparse.agents.net_state import NetState, reinitialised_at, with_masks
from mtrl_sparse.agents.trees import is_none
from mtrl_sparse.methods.topology import (
    Distribution,
    LayerSlices,
    keep_top_per_layer,
    keep_top_scores,
    layer_densities,
    layer_shapes,
    leaf_slices,
    map_layers,
    masked_leaves_with_paths,
    num_to_keep,
)


def all_active_masks(params: Any, maskable: Any) -> Any:
    """Masks of a still-dense network: all True on maskable leaves, None elsewhere."""
    return jax.tree.map(lambda p, f: jnp.ones(p.shape, bool) if f else None, params, maskable)


def active_magnitudes(weights: jax.Array, mask: jax.Array) -> jax.Array:
    """|w| of the active weights, -inf for the inactive ones (so they always rank last)."""
    return jnp.where(mask, jnp.abs(weights).astype(jnp.float32), -jnp.inf)


def weight_magnitudes(masks: Any, params: Any) -> Any:
    """|w| of every masked leaf (None at unmasked leaves): the tie-break of score rankings."""
    return jax.tree.map(lambda m, w: None if m is None else jnp.abs(w), masks, params,
                        is_leaf=is_none)


def prune_layers(params: Any, masks: Any, sparsity: jax.Array,
                 distribution: Distribution = "uniform", layer_slices: LayerSlices = (),
                 scores: Any = None) -> Any:
    """Per masked layer, keep its target number of largest-|w| active weights: round(density x
    size), the densities spread over the layers by ``distribution`` so that the network's
    sparsity is ``sparsity`` (``uniform``: every layer at ``sparsity``). A leaf stacking layers
    (``layer_slices``: per-task heads) is pruned layer by layer, each to its own count.

    With ``scores`` (congruent with ``masks``, -inf at inactive weights, e.g. a saliency) the
    highest scores are kept instead, equal scores by |w|: a layer whose scores are all equal (no
    gradient reached it) keeps its largest weights.

    A layer with fewer active weights than its count keeps them all: pruning never regrows.
    """
    densities = iter(layer_densities(layer_shapes(masked_leaves_with_paths(masks), layer_slices),
                                     sparsity, distribution))
    if scores is None:
        scores = jax.tree.map(lambda m, w: None if m is None else active_magnitudes(w, m),
                              masks, params, is_leaf=is_none)
        tie_breaks = jax.tree.map(lambda m: None, masks, is_leaf=is_none)
    else:
        tie_breaks = weight_magnitudes(masks, params)

    def prune_leaf(path: tuple, mask: jax.Array | None, score: Any, tie_break: Any
                   ) -> jax.Array | None:
        if mask is None:
            return None
        return keep_top_per_layer(score, leaf_slices(path, layer_slices), densities,
                                  tie_break) & mask

    return jax.tree_util.tree_map_with_path(prune_leaf, masks, scores, tie_breaks,
                                            is_leaf=is_none)


def prune_globally(params: Any, masks: Any, sparsity: jax.Array) -> Any:
    """Keep the round((1 - sparsity) x maskable weights) largest-|w| active weights of the network.

    One magnitude threshold for all masked layers; never regrows.
    """
    scores = jax.tree.map(lambda m, w: None if m is None else active_magnitudes(w, m),
                          masks, params, is_leaf=is_none)
    return keep_top_globally(scores, masks, 1.0 - sparsity)


def keep_top_globally(scores: Any, masks: Any, density: jax.Array,
                      tie_break: Any = None) -> Any:
    """Keep the round(density x maskable weights) highest-scoring active weights of the network,
    one threshold for all masked layers; ``scores`` (congruent with ``masks``, None at unmasked
    leaves) must be -inf at inactive weights, so that nothing regrows. Equal scores rank by
    ``tie_break`` (congruent with ``scores``; e.g. |w|), then by position."""
    mask_leaves, treedef = jax.tree.flatten(masks, is_leaf=is_none)
    score_leaves = treedef.flatten_up_to(scores)
    layers = [s for m, s in zip(mask_leaves, score_leaves, strict=True) if m is not None]
    if not layers:
        return masks
    flat = jnp.concatenate([s.reshape(-1) for s in layers])
    flat_tie_break = None
    if tie_break is not None:
        tie_leaves = treedef.flatten_up_to(tie_break)
        flat_tie_break = jnp.concatenate([t.reshape(-1) for m, t in zip(
            mask_leaves, tie_leaves, strict=True) if m is not None])
    keep = keep_top_scores(flat, num_to_keep(density, flat.size), flat_tie_break)
    offset, pruned = 0, []
    for mask in mask_leaves:
        if mask is None:
            pruned.append(None)
            continue
        pruned.append(keep[offset:offset + mask.size].reshape(mask.shape) & mask)
        offset += mask.size
    return jax.tree.unflatten(treedef, pruned)


def num_to_drop(mask: jax.Array, drop_fraction: jax.Array) -> jax.Array:
    """round(drop_fraction x active weights), capped by the inactive weights that can regrow."""
    active = jnp.sum(mask, dtype=jnp.int32)
    wanted = jnp.round(drop_fraction * active.astype(jnp.float32)).astype(jnp.int32)
    return jnp.minimum(wanted, mask.size - active)


def drop_and_regrow(params: Any, masks: Any, grow_scores: Any, drop_fraction: jax.Array,
                    layer_slices: LayerSlices = ()) -> Any:
    """Per masked layer, drop the ``num_to_drop`` smallest-|w| active weights and grow as many.

    The grown weights are the highest ``grow_scores`` among the weights that were inactive before
    the drop (a just-dropped weight never regrows), so each layer keeps its number of active
    weights. ``grow_scores`` is congruent with the params (its leaves at unmasked leaves unused).
    A leaf stacking layers (``layer_slices``) drops and grows layer by layer.
    """

    def evolve(mask: jax.Array, weights: jax.Array, grow: jax.Array) -> jax.Array:
        active = jnp.sum(mask, dtype=jnp.int32)
        dropped = num_to_drop(mask, drop_fraction)
        kept = keep_top_scores(active_magnitudes(weights, mask), active - dropped) & mask
        grown = keep_top_scores(jnp.where(mask, -jnp.inf, grow.astype(jnp.float32)),
                                dropped) & ~mask
        return kept | grown

    def evolve_leaf(path: tuple, mask: jax.Array | None, weights: jax.Array,
                    grow: Any) -> jax.Array | None:
        if mask is None:
            return None
        return map_layers(evolve, leaf_slices(path, layer_slices), (mask, weights, grow))

    return jax.tree_util.tree_map_with_path(evolve_leaf, masks, params, grow_scores,
                                            is_leaf=is_none)


def changed_positions(old: Any, new: Any) -> Any:
    """True where a mask differs (a weight pruned, dropped or grown); None at unmasked leaves."""
    return jax.tree.map(lambda a, b: None if a is None else a != b, old, new, is_leaf=is_none)


def install_masks(
    net_state: NetState, masks: Any, tx: optax.GradientTransformation
) -> NetState:
    """Replace the masks of ``net_state``; zero the weights and optimizer moments that changed.

    A pruned or dropped weight is zeroed with its moments; a grown weight starts at zero with
    fresh moments; every other weight and moment is untouched.
    """
    changed = changed_positions(net_state.masks, masks)
    params = jax.tree.map(
        lambda m, c, p: p if m is None else jnp.where(m & ~c, p, jnp.zeros((), p.dtype)),
        masks, changed, net_state.params, is_leaf=is_none,
    )
    return reinitialised_at(with_masks(net_state, masks), params, changed, tx)
