"""Regularisers selectable as methods: weight decay and LayerNorm.

Neither draws masks nor fires events; each declares what the agent builder must add, as data in its
registry entry (an optimizer transform, a network option), so that sweeps treat them like any other
method (``--method weight_decay``, ``--method gmp+layernorm``, ...).

- ``weight_decay``: the reference paper uses PyTorch's Adam ``weight_decay`` (1e-6 on dense agents),
  which is coupled L2: ``wd * w`` is added to the gradient before Adam. ``decoupled`` switches to
  AdamW's form (Loshchilov & Hutter 2019): ``wd * w`` added to Adam's update, scaled by the
  learning rate with it.
- ``layernorm``: LayerNorm after each hidden linear layer, before the activation (Ba et al. 2016;
  Lyle et al. 2023 and Nauman et al. 2024 on LayerNorm and plasticity).
"""

from __future__ import annotations

from dataclasses import dataclass

import optax

from mtrl_sparse.methods.base import Method, MethodEntry, NetworkMethodSettings
from mtrl_sparse.methods.dense import dense


@dataclass(frozen=True)
class WeightDecayOptions:
    """Weight decay of the networks that run ``weight_decay``."""

    coefficient: float = 1e-6
    """Decay coefficient wd (the reference paper's 1e-6)."""
    decoupled: bool = False
    """False: coupled L2 (wd * w added to the gradient before Adam, as PyTorch's Adam); True:
    decoupled (AdamW: wd * w added to Adam's update, then scaled by the learning rate)."""


def check_weight_decay_options(options: WeightDecayOptions) -> None:
    """ValueError (one line) for a negative coefficient."""
    if options.coefficient < 0:
        raise ValueError(f"weight_decay coefficient must be >= 0; got {options.coefficient}")


def weight_decay(settings: NetworkMethodSettings, options: WeightDecayOptions) -> Method:
    del settings, options
    return dense()  # no masks, no events: the network is built differently


def weight_decay_optimizer(options: WeightDecayOptions) -> tuple[tuple, tuple]:
    """(transforms before Adam, transforms after Adam) for the configured decay.

    Decay applies to every parameter leaf the optimizer sees; masked weights are zero, so they
    receive no decay, and the agent re-masks after every step anyway.
    """
    decay = optax.add_decayed_weights(options.coefficient)
    return ((), (decay,)) if options.decoupled else ((decay,), ())


def layernorm(settings: NetworkMethodSettings, options: None) -> Method:
    del settings, options
    return dense()  # no masks, no events: the network is built differently


WEIGHT_DECAY_ENTRY = MethodEntry(
    name="weight_decay",
    kind="regularizer",
    description="weight decay (coupled L2 as PyTorch's Adam by default; decoupled option)",
    source="Todorov et al. 2025 (1e-6 on dense agents); Loshchilov & Hutter 2019 (AdamW)",
    build=weight_decay,
    options=WeightDecayOptions,
    check=check_weight_decay_options,
    optimizer=weight_decay_optimizer,
)

LAYERNORM_ENTRY = MethodEntry(
    name="layernorm",
    kind="regularizer",
    description="LayerNorm after each hidden linear layer, before the activation",
    source="Ba et al. 2016; Lyle et al. 2023 (LayerNorm and plasticity)",
    build=layernorm,
    layer_norm=True,
)
