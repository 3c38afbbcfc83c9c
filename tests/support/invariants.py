"""The invariants every test of a network state checks: the mask invariant (the design page,
docs/pages/design.md) and
comparisons of whole pytrees; and the stacking of pytrees that vmap tests compare against.

The mask invariant: masks are boolean and congruent with the params they mask (``None`` where a
leaf is not maskable), ``params == params * masks`` with every masked weight exactly zero (a NaN
there fails too), and the Adam moments (mu and nu) are zero wherever a weight is masked.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtrl_sparse.agents.net_state import NetState
from mtrl_sparse.agents.trees import is_none


def adam_moments(opt_state: Any) -> list[tuple[Any, Any]]:
    """(mu, nu) of every Adam state anywhere in an optimizer state (a chain, a wrapper, ...)."""
    is_adam = lambda node: isinstance(node, optax.ScaleByAdamState)
    return [(node.mu, node.nu) for node in jax.tree.leaves(opt_state, is_leaf=is_adam)
            if is_adam(node)]


def assert_mask_invariant(net: NetState, *, sparse: bool = False) -> None:
    """The mask invariant of ``net``; with ``sparse``, at least one weight is masked too.

    An optimizer state with any leaf must hold an Adam state (the moments are checked, never
    skipped); an empty one (``()``, e.g. a target network's) has no moments to check.
    """
    param_leaves = jax.tree.leaves(net.params)
    mask_leaves = jax.tree.leaves(net.masks, is_leaf=is_none)
    assert len(param_leaves) == len(mask_leaves), (len(param_leaves), len(mask_leaves))
    moments = adam_moments(net.opt_state)
    assert moments or not jax.tree.leaves(net.opt_state), "no Adam state in the optimizer state"
    moment_leaves = [jax.tree.leaves(tree) for pair in moments for tree in pair]
    masked = 0
    for index, (p, m) in enumerate(zip(param_leaves, mask_leaves, strict=True)):
        if m is None:
            continue
        p, m = np.asarray(p), np.asarray(m)
        assert m.dtype == np.bool_ and m.shape == p.shape, (index, m.dtype, m.shape, p.shape)
        masked += int((~m).sum())
        assert np.all(p[~m] == 0), f"nonzero weight at a masked position (leaf {index})"
        np.testing.assert_array_equal(p, p * m)
        for leaves in moment_leaves:
            assert len(leaves) == len(param_leaves)
            assert np.all(np.asarray(leaves[index])[~m] == 0), (
                f"nonzero Adam moment at a masked position (leaf {index})")
    if sparse:
        assert masked > 0, "the network is dense"
    if net.scales is not None:
        _assert_scales_invariant(net, mask_leaves)


def _assert_scales_invariant(net: NetState, mask_leaves: list) -> None:
    """A reparameterised network: scales congruent with the params (None where not maskable),
    1 where masked, their Adam moments zero there (or, for scales the method trains itself as
    noisy gates, their noise zero there); the effective weights masked too."""
    scale_leaves = jax.tree.leaves(net.scales, is_leaf=is_none)
    assert len(scale_leaves) == len(mask_leaves)
    if net.scale_opt_state is None:
        assert net.scale_noise is not None, "scales with neither an optimizer state nor noise"
        moments = [jax.tree.leaves(net.scale_noise, is_leaf=is_none)]
    else:
        moments = [jax.tree.leaves(tree, is_leaf=is_none)
                   for pair in adam_moments(net.scale_opt_state) for tree in pair]
    assert moments, "no Adam state for the scales"
    for index, (s, m) in enumerate(zip(scale_leaves, mask_leaves, strict=True)):
        if s is None or m is None:
            continue
        s, m = np.asarray(s), np.asarray(m)
        assert s.shape == m.shape and np.all(np.isfinite(s)), index
        assert np.all(s[~m] == 1), f"scale other than 1 at a masked position (leaf {index})"
        for leaves in moments:
            assert np.all(np.asarray(leaves[index])[~m] == 0), (
                f"nonzero scale moment at a masked position (leaf {index})")


def _assert_same_structure(a: Any, b: Any) -> tuple[list, list]:
    assert jax.tree.structure(a) == jax.tree.structure(b), (jax.tree.structure(a),
                                                            jax.tree.structure(b))
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert (x.shape, x.dtype) == (y.shape, y.dtype), ((x.shape, x.dtype), (y.shape, y.dtype))
    return leaves_a, leaves_b


def assert_trees_equal(a: Any, b: Any) -> None:
    """Same structure, and every leaf of the same shape, dtype and values (bit for bit)."""
    for x, y in zip(*_assert_same_structure(a, b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), strict=True)


def trees_equal(a: Any, b: Any) -> bool:
    """Whether two trees of the same structure, shapes and dtypes (asserted: a mismatch there is
    an error, not a difference) hold the same values."""
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(*_assert_same_structure(a, b), strict=True))


def assert_trees_close(a: Any, b: Any, *, rtol: float, atol: float) -> None:
    """Same structure, shapes and dtypes; every leaf close (``np.testing.assert_allclose``)."""
    for x, y in zip(*_assert_same_structure(a, b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def stack_trees(trees: list[Any]) -> Any:
    """Pytrees of one structure -> one pytree whose leaves are stacked on a new leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
