"""Paths in nested-dict pytrees (Flax variables): naming, reading and replacing a subtree.

A path is a tuple of dict keys below the root, e.g. ``("params", "mlp", "hidden_0", "kernel")``;
``jax.tree_util`` paths (tuples of key objects) become strings with ``key_name`` / ``path_str``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def key_name(key: Any) -> str:
    """The name of one ``jax.tree_util`` path key (dict key, attribute name or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: tuple) -> str:
    """A ``jax.tree_util`` path as a "/"-joined string, e.g. ``"params/mlp/hidden_0/kernel"``."""
    return "/".join(key_name(k) for k in path)


def get_path(tree: Any, path: Sequence[str]) -> Any:
    """The subtree of the nested dict ``tree`` at ``path``; None once a None is met on the way."""
    for key in path:
        if tree is None:
            return None
        tree = tree[key]
    return tree


def has_path(tree: Any, path: Sequence[str]) -> bool:
    """Whether ``path`` leads somewhere in the nested dict ``tree``."""
    for key in path:
        if not hasattr(tree, "keys") or key not in tree:
            return False
        tree = tree[key]
    return True


def set_path(tree: Any, path: Sequence[str], value: Any) -> Any:
    """A copy of the nested dict ``tree`` with ``value`` at ``path`` (the dicts on the way copied,
    everything else shared)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    return {**tree, head: set_path(tree[head], rest, value)}
