"""``static``: a random sparse topology drawn at initialisation and kept for the whole run.

The classic sparse-from-scratch baseline (e.g. Mocanu et al. 2018 before any evolution; Evci et
al. 2020, "static" in RigL's comparisons). Per-layer sparsity follows ``uniform`` or ``erk``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mtrl_sparse.methods.base import (
    DISTRIBUTION_PARAMETER,
    SPARSITY_PARAMETER,
    Method,
    MethodEntry,
    unchanged,
)
from mtrl_sparse.methods.topology import Distribution, LayerSlices, random_masks


def static_sparse(sparsity: float | jax.Array, distribution: Distribution = "erk",
                  layer_slices: LayerSlices = ()) -> Method:
    """Masks with overall ``sparsity`` (may be traced), drawn once; never changed afterwards."""

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, Any]:
        masks = random_masks(params, maskable, sparsity, distribution, key, layer_slices)
        return masks, {"target_sparsity": jnp.asarray(sparsity, jnp.float32)}

    return Method(init=init, transform=unchanged)


ENTRY = MethodEntry(
    name="static",
    kind="sparsity",
    description="random sparse topology drawn at init and kept fixed (uniform or ERK)",
    source="Mocanu et al. 2018 (ERK); Evci et al. 2020 (static baseline)",
    build=lambda settings, options: static_sparse(settings.sparsity, settings.distribution,
                                                  settings.layer_slices),
    parameters=(SPARSITY_PARAMETER, DISTRIBUTION_PARAMETER),
)
