"""The shape every sparsity or plasticity method has: a pair of pure functions.

Like an optax ``GradientTransformation``, a method is a ``NamedTuple`` of ``init`` and
``transform`` (see ``mtrl_sparse.agents.net_state.MaskMethod`` for their signatures). Methods are
built from configuration by their registry entry (``mtrl_sparse.methods.registry``); the agents
and training loops only ever see this pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from mtrl_sparse.agents.net_state import NetState


class Method(NamedTuple):
    """``init(params, maskable, key) -> (masks, method_state)``;
    ``transform(net_state, step, key, context) -> net_state``."""

    init: Callable[[Any, Any, jax.Array], tuple[Any, Any]]
    transform: Callable[[NetState, jax.Array, jax.Array, dict], NetState]


def unchanged(net_state: NetState, step: jax.Array, key: jax.Array, context: dict) -> NetState:
    """The transform of methods without periodic events."""
    del step, key, context
    return net_state
