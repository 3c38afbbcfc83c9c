"""Small pytree helpers shared by the agents, the methods and the plasticity metrics.

Mask trees follow the convention of ``mtrl_sparse.agents.net_state``: congruent with the params,
a bool array where a leaf is masked, ``None`` where it is never masked (a None mask means "every
entry active").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def is_none(x: Any) -> bool:
    """``is_leaf`` for mask trees: a None mask is a leaf of its own, not an empty subtree."""
    return x is None


def global_norm(tree: Any) -> jax.Array:
    """L2 norm over every leaf of ``tree`` together (None leaves skipped) -> () float32;
    0.0 for a tree without leaves."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def mask_change_fraction(old_masks: Any, new_masks: Any) -> jax.Array:
    """Fraction of the maskable entries whose mask differs between two mask trees -> () float32.

    The one rule: a leaf that is None in both trees is not maskable and is skipped; a leaf that is
    None in only one tree counts that None as all True (a None mask means every entry active, so
    masking a leaf that had none changes exactly the entries now masked). Entries are counted as
    integers, so the fraction is exact up to the final division. 0.0 when no leaf is masked.
    """
    old_leaves = jax.tree.leaves(old_masks, is_leaf=is_none)
    new_leaves = jax.tree.leaves(new_masks, is_leaf=is_none)
    if len(old_leaves) != len(new_leaves):
        raise ValueError("mask trees of different structure")
    changed, total = [], 0
    for old, new in zip(old_leaves, new_leaves, strict=True):
        if old is None and new is None:
            continue
        ref = new if old is None else old
        old = jnp.ones(ref.shape, bool) if old is None else old
        new = jnp.ones(ref.shape, bool) if new is None else new
        changed.append(jnp.sum(old != new, dtype=jnp.int32))
        total += ref.size
    if not changed:
        return jnp.zeros((), jnp.float32)
    return sum(changed).astype(jnp.float32) / total
