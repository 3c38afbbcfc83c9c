"""The shape every sparsity or plasticity method has: a pair of pure functions.

Like an optax ``GradientTransformation``, a method is a ``NamedTuple`` of ``init`` and
``transform`` (see ``mtrl_sparse.agents.net_state.MaskMethod`` for their signatures). Methods are
built from configuration by their registry entry (``mtrl_sparse.methods.registry``); the agents
and training loops only ever see this pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax

from mtrl_sparse.agents.net_state import NetState
from mtrl_sparse.methods.topology import Distribution


class Method(NamedTuple):
    """``init(params, maskable, key) -> (masks, method_state)``;
    ``transform(net_state, step, key, context) -> net_state``."""

    init: Callable[[Any, Any, jax.Array], tuple[Any, Any]]
    transform: Callable[[NetState, jax.Array, jax.Array, dict], NetState]


@dataclass(frozen=True)
class NetworkMethodSettings:
    """A network's resolved method configuration: what a builder receives.

    Attributes:
        name: the method name, possibly a composition ``a+b``.
        sparsity: the final target sparsity of the network.
        distribution: per-layer sparsity distribution.
        total_updates: updates of the network over the whole run (for schedules given as
            fractions of the run); None where no schedule needs it.
        interval_scale: multiplies every interval of the network's methods (the option fields
            named ``*every_updates``), for a network that makes far fewer updates than another
            (PPO's critic); the scaled interval is rounded and at least 1.
    """

    name: str
    sparsity: float
    distribution: Distribution = "erk"
    total_updates: int | None = None
    interval_scale: float = 1.0

    def run_updates(self, method: str) -> int:
        """``total_updates``, or ``ValueError`` for a scheduled method built without it."""
        if self.total_updates is None or self.total_updates <= 0:
            raise ValueError(f"{method} schedules by fractions of the run and needs the run's "
                             f"total updates (> 0); got {self.total_updates}")
        return self.total_updates


def unchanged(net_state: NetState, step: jax.Array, key: jax.Array, context: dict) -> NetState:
    """The transform of methods without periodic events."""
    del step, key, context
    return net_state
