"""Composition of methods: ``--method gmp+redo`` runs GMP's transform, then ReDo's.

At most one member of a composition draws masks (the sparsity method; the registry checks this);
the masks of the composition are that member's, and each member keeps its own method state under
its name in a dict (``{"gmp": ..., "redo": ...}``), which is also how method states are logged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mtrl_sparse.agents.net_state import NetState
from mtrl_sparse.methods.base import Method


def _has_masks(masks: Any) -> bool:
    return bool(jax.tree.leaves(masks))


def compose(members: dict[str, Method]) -> Method:
    """One method that initialises every member and applies their transforms in order."""

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, Any]:
        keys = jax.random.split(key, len(members))
        results = {name: m.init(params, maskable, k)
                   for (name, m), k in zip(members.items(), keys, strict=True)}
        with_masks = [masks for masks, _ in results.values() if _has_masks(masks)]
        if len(with_masks) > 1:
            raise ValueError("a composition may contain at most one method that draws masks")
        masks = with_masks[0] if with_masks else next(iter(results.values()))[0]
        return masks, {name: state for name, (_, state) in results.items()}

    def transform(net_state: NetState, step: jax.Array, key: jax.Array, context: dict) -> NetState:
        keys = jax.random.split(key, len(members))
        states = dict(net_state.method_state)
        for (name, member), k in zip(members.items(), keys, strict=True):
            net_state = member.transform(net_state.replace(method_state=states[name]), step, k,
                                         context)
            states[name] = net_state.method_state
        return net_state.replace(method_state=states)

    due = {name: m.dense_grads_due for name, m in members.items() if m.dense_grads_due}

    def dense_grads_due(net_state: NetState, step: jax.Array, context: Any) -> jax.Array:
        return jnp.any(jnp.stack([
            member_due(net_state.replace(method_state=net_state.method_state[name]), step,
                       context)
            for name, member_due in due.items()]))

    return Method(init=init, transform=transform,
                  dense_grads_due=dense_grads_due if due else None)
