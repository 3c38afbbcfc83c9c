"""mtrl-sparse: sparse networks and plasticity in multi-task reinforcement learning, in JAX.

``mtrl_sparse.train(config)`` runs what ``mtrl-sparse train`` runs; configs and presets live in
``mtrl_sparse.config`` and ``mtrl_sparse.presets``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mtrl_sparse.run_loop import RunResult


def train(config: Any, *, resume: bool = False) -> RunResult:
    """Train as ``config`` (any agent's config, ``mtrl_sparse.config.RunConfig``) says; see
    ``mtrl_sparse.run_loop.train``."""
    from mtrl_sparse.run_loop import train as run

    return run(config, resume=resume)
