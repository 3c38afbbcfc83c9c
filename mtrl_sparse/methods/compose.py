"""Composition of methods: ``--method gmp+redo`` runs GMP's transform, then ReDo's.

At most one member of a composition draws masks (the sparsity method; the registry checks this);
the masks of the composition are that member's, and each member keeps its own method state, in
order, in a tuple.
"""

from __future__ import annotations

from typing import Any

import jax

from mtrl_sparse.agents.net_state import NetState
from mtrl_sparse.methods.base import Method


def _has_masks(masks: Any) -> bool:
    return bool(jax.tree.leaves(masks))


def compose(members: list[Method]) -> Method:
    """One method that initialises every member and applies their transforms in order."""
    if len(members) == 1:
        return members[0]

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, Any]:
        keys = jax.random.split(key, len(members))
        results = [m.init(params, maskable, k) for m, k in zip(members, keys, strict=True)]
        with_masks = [masks for masks, _ in results if _has_masks(masks)]
        if len(with_masks) > 1:
            raise ValueError("a composition may contain at most one method that draws masks")
        masks = with_masks[0] if with_masks else results[0][0]
        return masks, tuple(state for _, state in results)

    def transform(net_state: NetState, step: jax.Array, key: jax.Array, context: dict) -> NetState:
        keys = jax.random.split(key, len(members))
        states = []
        for member, member_state, k in zip(members, net_state.method_state, keys, strict=True):
            net_state = member.transform(net_state.replace(method_state=member_state), step, k,
                                         context)
            states.append(net_state.method_state)
        return net_state.replace(method_state=tuple(states))

    return Method(init=init, transform=transform)
