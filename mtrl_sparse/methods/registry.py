"""The method registry: every method selectable by name, with its description and builder.

Adding a method means adding one module and one ``MethodEntry`` here; training loops and agents
never name a method. A method's hyperparameters are a frozen dataclass (its ``options``) that
becomes a group of CLI flags (``--methods.NAME.FIELD``); what a method needs from the agent
builder (LayerNorm, an optimizer transform) is declared here as data.

``--method a+b`` composes methods (e.g. ``gmp+redo``): at most one sparsity method, any number of
plasticity methods and regularisers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import optax

from mtrl_sparse.agents.optim import NetworkSetup
from mtrl_sparse.methods.base import Method, NetworkMethodSettings
from mtrl_sparse.methods.compose import compose
from mtrl_sparse.methods.dense import dense
from mtrl_sparse.methods.gmp import GMPOptions, check_gmp_options, gmp
from mtrl_sparse.methods.redo import ReDoOptions, check_redo_options, redo
from mtrl_sparse.methods.regularizers import (
    WeightDecayOptions,
    check_weight_decay_options,
    layernorm,
    weight_decay,
    weight_decay_optimizer,
)
from mtrl_sparse.methods.reset import ResetOptions, check_reset_options, reset
from mtrl_sparse.methods.sparse_evolution import (
    RigLOptions,
    SETOptions,
    check_evolution_options,
    rigl,
    sparse_evolution_set,
)
from mtrl_sparse.methods.static import static_sparse
from mtrl_sparse.methods.topology import DISTRIBUTIONS

Kind = Literal["dense", "sparsity", "plasticity", "regularizer"]


def _no_optimizer(options: Any) -> tuple[tuple, tuple]:
    return (), ()


def _no_check(options: Any) -> None:
    return None


@dataclass(frozen=True)
class MethodEntry:
    """One registered method.

    Attributes:
        name: what ``--method`` accepts.
        kind: ``sparsity`` methods draw masks and need a sparsity in (0, 1); the others need 0
            unless composed with a sparsity method.
        description: one line for ``mtrl-sparse methods``.
        source: the paper it comes from.
        build: (settings, options) -> Method.
        options: the dataclass of its hyperparameters (flags ``--methods.NAME.FIELD``), or None.
        layer_norm: the method asks the agent builder for LayerNorm in the network.
        optimizer: options -> (gradient transforms before Adam, update transforms after Adam).
        parameters: flags it reads besides its options, with their meaning.
        check: options -> None; raises ``ValueError`` (one line) for options that cannot run.
    """

    name: str
    kind: Kind
    description: str
    source: str
    build: Callable[[NetworkMethodSettings, Any], Method]
    options: type | None = None
    layer_norm: bool = False
    optimizer: Callable[[Any], tuple[tuple, tuple]] = _no_optimizer
    parameters: tuple[tuple[str, str], ...] = ()
    check: Callable[[Any], None] = _no_check


_SPARSITY = ("--sparsity", "final fraction of maskable weights that are masked, in (0, 1)")
_DISTRIBUTION = ("--distribution", f"per-layer sparsity distribution, one of {DISTRIBUTIONS}")

METHODS: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
        MethodEntry(
            name="dense",
            kind="dense",
            description="no masks: the plain dense network (the baseline)",
            source="-",
            build=lambda s, o: dense(),
        ),
        MethodEntry(
            name="static",
            kind="sparsity",
            description="random sparse topology drawn at init and kept fixed (uniform or ERK)",
            source="Mocanu et al. 2018 (ERK); Evci et al. 2020 (static baseline)",
            build=lambda s, o: static_sparse(s.sparsity, s.distribution),
            parameters=(_SPARSITY, _DISTRIBUTION),
        ),
        MethodEntry(
            name="gmp",
            kind="sparsity",
            description="gradual magnitude pruning from dense to --sparsity on a cubic schedule",
            source="Zhu & Gupta 2017 (arXiv 1710.01878); Todorov et al. 2025 (settings)",
            build=gmp,
            options=GMPOptions,
            parameters=(_SPARSITY,),
            check=check_gmp_options,
        ),
        MethodEntry(
            name="set",
            kind="sparsity",
            description="sparse evolutionary training: drop smallest weights, regrow at random",
            source="Mocanu et al. 2018 (Nature Communications 9, 2383)",
            build=sparse_evolution_set,
            options=SETOptions,
            parameters=(_SPARSITY, _DISTRIBUTION),
            check=lambda o: check_evolution_options(o, "set"),
        ),
        MethodEntry(
            name="rigl",
            kind="sparsity",
            description="drop smallest weights, regrow where the dense gradient is largest",
            source="Evci et al. 2020, Rigging the Lottery (ICML, arXiv 1911.11134)",
            build=rigl,
            options=RigLOptions,
            parameters=(_SPARSITY, _DISTRIBUTION),
            check=lambda o: check_evolution_options(o, "rigl"),
        ),
        MethodEntry(
            name="reset",
            kind="plasticity",
            description="re-initialise the output layer every N updates, at most K times",
            source="Nikishin et al. 2022, The Primacy Bias in Deep RL (ICML, arXiv 2205.07802)",
            build=reset,
            options=ResetOptions,
            check=check_reset_options,
        ),
        MethodEntry(
            name="redo",
            kind="plasticity",
            description="recycle dormant neurons: re-init incoming, zero outgoing weights",
            source="Sokar et al. 2023, The Dormant Neuron Phenomenon in Deep RL (ICML, "
                   "arXiv 2302.12902)",
            build=redo,
            options=ReDoOptions,
            check=check_redo_options,
        ),
        MethodEntry(
            name="weight_decay",
            kind="regularizer",
            description="weight decay (coupled L2 as PyTorch's Adam by default; decoupled option)",
            source="Todorov et al. 2025 (1e-6 on dense agents); Loshchilov & Hutter 2019 (AdamW)",
            build=weight_decay,
            options=WeightDecayOptions,
            optimizer=weight_decay_optimizer,
            check=check_weight_decay_options,
        ),
        MethodEntry(
            name="layernorm",
            kind="regularizer",
            description="LayerNorm after each hidden linear layer, before the activation",
            source="Ba et al. 2016; Lyle et al. 2023 (LayerNorm and plasticity)",
            build=layernorm,
            layer_norm=True,
        ),
    )
}

MethodOptions = dataclasses.make_dataclass(
    "MethodOptions",
    [(e.name, e.options, field(default_factory=e.options)) for e in METHODS.values()
     if e.options is not None],
    frozen=True,
)
MethodOptions.__doc__ = "Hyperparameters of every method (used by the networks that run it)."


class MethodError(ValueError):
    """A method name or method/sparsity combination that is not accepted (a usage error)."""


def method_members(name: str, network: str = "network") -> list[MethodEntry]:
    """The registry entries of ``name`` (``a+b`` -> [a, b]); ``MethodError`` if unknown."""
    members = []
    for part in name.split("+"):
        if part not in METHODS:
            raise MethodError(
                f"unknown method {part!r} for the {network}; accepted: {', '.join(METHODS)} "
                "(combine as sparsity+plasticity, e.g. gmp+redo)"
            )
        members.append(METHODS[part])
    return members


def check_method(name: str, sparsity: float, network: str = "network") -> list[MethodEntry]:
    """Validate ``name`` and ``sparsity`` for one network; raise ``MethodError`` in one line.

    A traced sparsity (inside a vmapped sweep) skips the value checks: sweeps check their
    concrete values before tracing.
    """
    members = method_members(name, network)
    sparse = [m.name for m in members if m.kind == "sparsity"]
    if len(sparse) > 1:
        raise MethodError(
            f"method {name!r} of the {network} combines several sparsity methods "
            f"({', '.join(sparse)}); combine one with plasticity methods or regularisers"
        )
    if len(members) > 1 and any(m.kind == "dense" for m in members):
        raise MethodError(f"method {name!r} of the {network}: 'dense' cannot be combined")
    if not isinstance(sparsity, int | float):
        return members
    if not 0.0 <= sparsity < 1.0:
        raise MethodError(f"sparsity {sparsity} of the {network} is outside [0, 1)")
    if sparse and sparsity == 0.0:
        raise MethodError(
            f"method {name!r} of the {network} needs a sparsity in (0, 1); got 0 "
            "(use --method dense for a dense network)"
        )
    if not sparse and sparsity > 0.0:
        raise MethodError(
            f"method {name!r} of the {network} is dense but sparsity is {sparsity}; "
            "use sparsity 0 or a sparse method (e.g. static)"
        )
    return members


def check_options(members: list[MethodEntry], options: Any) -> None:
    """Each member's own check of its options; ``MethodError`` naming the flag group."""
    for entry in members:
        if entry.options is None:
            continue
        try:
            entry.check(getattr(options, entry.name))
        except ValueError as error:
            flag = f"--methods.{entry.name}".replace("_", "-")
            raise MethodError(f"{flag}: {error}") from None


INTERVAL_SUFFIX = "every_updates"
"""Option fields whose name ends so are intervals in updates (scaled by ``interval_scale``)."""


def scale_intervals(options: Any, scale: float) -> Any:
    """``options`` (a method's options dataclass) with each ``*every_updates`` field multiplied by
    ``scale``, rounded, at least 1; unchanged for ``scale == 1``."""
    if scale == 1.0:
        return options
    return dataclasses.replace(options, **{
        f.name: max(1, round(getattr(options, f.name) * scale))
        for f in dataclasses.fields(options) if f.name.endswith(INTERVAL_SUFFIX)})


def build_network(
    settings: NetworkMethodSettings, options: Any = None, network: str = "network"
) -> NetworkSetup:
    """Validate and build what the agent needs for one network: method, LayerNorm, optimizer."""
    if settings.distribution not in DISTRIBUTIONS:
        raise MethodError(
            f"unknown distribution {settings.distribution!r}; accepted: {', '.join(DISTRIBUTIONS)}"
        )
    options = MethodOptions() if options is None else options
    members = check_method(settings.name, settings.sparsity, network)
    check_options(members, options)

    def member_options(entry: MethodEntry) -> Any:
        if entry.options is None:
            return None
        return scale_intervals(getattr(options, entry.name), settings.interval_scale)

    gradient_transforms: list[optax.GradientTransformation] = []
    update_transforms: list[optax.GradientTransformation] = []
    for entry in members:
        before_adam, after_adam = entry.optimizer(member_options(entry))
        gradient_transforms.extend(before_adam)
        update_transforms.extend(after_adam)
    return NetworkSetup(
        method=compose({m.name: m.build(settings, member_options(m)) for m in members}),
        layer_norm=any(m.layer_norm for m in members),
        gradient_transforms=tuple(gradient_transforms),
        update_transforms=tuple(update_transforms),
    )
