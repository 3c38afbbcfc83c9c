"""The method registry: every method selectable by name.

Each method module exports its whole ``MethodEntry`` (``mtrl_sparse.methods.base``); this module
only collects them (``BUILTIN_ENTRIES``), lets code outside the package add its own with
``register`` (or, scoped, ``registered``), and derives what depends on the current set of
methods: the options dataclass holding every method's hyperparameters
(``method_options_class``, one field per method with options, so one flag group
``--methods.NAME`` each).

``--method a+b`` composes methods (e.g. ``gmp+redo``): at most one sparsity method, any number of
plasticity methods and regularisers (checked by ``mtrl_sparse.methods.network``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

from mtrl_sparse.methods import (
    app,
    dense,
    gmp,
    ibm,
    redo,
    regularizers,
    reset,
    sign_in,
    sparse_evolution,
    sparse_tune,
    static,
)
from mtrl_sparse.methods.base import MethodEntry, MethodError

BUILTIN_ENTRIES: tuple[MethodEntry, ...] = (
    dense.ENTRY,
    static.ENTRY,
    gmp.ENTRY,
    sparse_evolution.SET_ENTRY,
    sparse_evolution.RIGL_ENTRY,
    app.ENTRY,
    reset.ENTRY,
    redo.ENTRY,
    regularizers.WEIGHT_DECAY_ENTRY,
    regularizers.LAYERNORM_ENTRY,
    sparse_tune.ENTRY,
    sign_in.ENTRY,
    ibm.ENTRY,
)

METHODS: dict[str, MethodEntry] = {entry.name: entry for entry in BUILTIN_ENTRIES}
"""The registered methods by name, in registration order (read it; change it with
``register`` / ``unregister``)."""


def register(entry: MethodEntry) -> MethodEntry:
    """Make ``entry`` selectable by ``--method`` (and its options flags ``--methods.NAME.*``)
    for the configs, CLIs and run directories created from now on; ``ValueError`` if its name is
    taken. Returns the entry."""
    if entry.name in METHODS:
        raise ValueError(f"a method named {entry.name!r} is already registered")
    METHODS[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove a method added by ``register``; the built-in methods cannot be removed."""
    if any(entry.name == name for entry in BUILTIN_ENTRIES):
        raise ValueError(f"{name!r} is a built-in method and cannot be unregistered")
    METHODS.pop(name)


@contextlib.contextmanager
def registered(entry: MethodEntry) -> Iterator[MethodEntry]:
    """``register(entry)`` for the duration of a ``with`` block."""
    register(entry)
    try:
        yield entry
    finally:
        unregister(entry.name)


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


@functools.cache
def _options_class(fields: tuple[tuple[str, type], ...]) -> type:
    cls = dataclasses.make_dataclass(
        "MethodOptions",
        [(name, options, dataclasses.field(default_factory=options)) for name, options in fields],
        frozen=True,
    )
    cls.__module__ = __name__
    cls.__doc__ = "Hyperparameters of every method (used by the networks that run it)."
    return cls


def method_options_class() -> type:
    """The frozen dataclass with one field per registered method that has options (named after
    the method, its options dataclass as type and default). Memoised on the registry's contents:
    the same registered methods give the same class."""
    return _options_class(tuple((entry.name, entry.options) for entry in METHODS.values()
                                if entry.options is not None))


MethodOptions = method_options_class()
"""The options class of the built-in methods (what configs hold unless a method is registered
from outside the package; see ``mtrl_sparse.config.config_class``)."""


def convert_options(options: Any, cls: type | None = None) -> Any:
    """``options`` (a method-options instance of any registry state) as an instance of ``cls``
    (default: the current ``method_options_class()``): the methods both know keep their values,
    the others get their defaults."""
    cls = method_options_class() if cls is None else cls
    if type(options) is cls:
        return options
    return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls)
                  if hasattr(options, f.name)})
