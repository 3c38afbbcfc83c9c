"""``dense``: no masks at all, so a dense agent costs exactly what a plain agent costs."""

from __future__ import annotations

from typing import Any

import jax

from mtrl_sparse.methods.base import Method, MethodEntry, unchanged
from mtrl_sparse.methods.topology import no_masks


def dense() -> Method:
    """Every leaf unmasked; the transform does nothing."""

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, Any]:
        del maskable, key
        return no_masks(params), None

    return Method(init=init, transform=unchanged)


ENTRY = MethodEntry(
    name="dense",
    kind="dense",
    description="no masks: the plain dense network (the baseline)",
    source="-",
    build=lambda settings, options: dense(),
)
