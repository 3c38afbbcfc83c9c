"""The method registry: every method selectable by name, with its description and builder.

Adding a method means adding one module and one ``MethodEntry`` here; training loops and agents
never name a method. ``--method a+b`` composes a sparsity method with a plasticity method (the
plasticity methods arrive with the method library).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mtrl_sparse.methods.base import Method
from mtrl_sparse.methods.dense import dense
from mtrl_sparse.methods.static import static_sparse
from mtrl_sparse.methods.topology import DISTRIBUTIONS, Distribution


@dataclass(frozen=True)
class NetworkMethodSettings:
    """A network's resolved method configuration: what a builder receives."""

    name: str
    sparsity: float
    distribution: Distribution = "erk"


@dataclass(frozen=True)
class MethodEntry:
    """One registered method.

    Attributes:
        name: what ``--method`` accepts.
        description: one line for ``mtrl-sparse methods``.
        sparse: True if the method needs a target sparsity in (0, 1); False if it needs 0.
        parameters: the settings it reads, with their meaning, for ``mtrl-sparse methods NAME``.
        source: the paper it comes from.
        build: settings -> Method.
    """

    name: str
    description: str
    sparse: bool
    parameters: tuple[tuple[str, str], ...]
    source: str
    build: Callable[[NetworkMethodSettings], Method]


_SPARSITY = ("sparsity", "final fraction of maskable weights that are masked, in (0, 1)")
_DISTRIBUTION = ("distribution", f"per-layer sparsity distribution, one of {DISTRIBUTIONS}")

METHODS: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
        MethodEntry(
            name="dense",
            description="no masks: the plain dense network (the baseline)",
            sparse=False,
            parameters=(),
            source="-",
            build=lambda s: dense(),
        ),
        MethodEntry(
            name="static",
            description="random sparse topology drawn at init and kept fixed (uniform or ERK)",
            sparse=True,
            parameters=(_SPARSITY, _DISTRIBUTION),
            source="Mocanu et al. 2018 (ERK); Evci et al. 2020 (static baseline)",
            build=lambda s: static_sparse(s.sparsity, s.distribution),
        ),
    )
}


class MethodError(ValueError):
    """A method name or method/sparsity combination that is not accepted (a usage error)."""


def check_method(name: str, sparsity: float, network: str = "network") -> MethodEntry:
    """Validate ``name`` and ``sparsity`` for one network; raise ``MethodError`` in one line."""
    if name not in METHODS:
        raise MethodError(
            f"unknown method {name!r} for the {network}; accepted: {', '.join(METHODS)}"
        )
    if not 0.0 <= sparsity < 1.0:
        raise MethodError(f"sparsity {sparsity} of the {network} is outside [0, 1)")
    entry = METHODS[name]
    if entry.sparse and sparsity == 0.0:
        raise MethodError(
            f"method {name!r} of the {network} needs a sparsity in (0, 1); got 0 "
            "(use --method dense for a dense network)"
        )
    if not entry.sparse and sparsity > 0.0:
        raise MethodError(
            f"method {name!r} of the {network} is dense but sparsity is {sparsity}; "
            "use sparsity 0 or a sparse method (e.g. static)"
        )
    return entry


def build_method(settings: NetworkMethodSettings, network: str = "network") -> Method:
    """Validate and build the method of one network."""
    if settings.distribution not in DISTRIBUTIONS:
        raise MethodError(
            f"unknown distribution {settings.distribution!r}; accepted: {', '.join(DISTRIBUTIONS)}"
        )
    return check_method(settings.name, settings.sparsity, network).build(settings)
