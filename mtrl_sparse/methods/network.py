"""From a network's method configuration to what the agent builder needs, and its one check.

``check_network`` is the single place where a network's method configuration is validated: the
method name and composition, the sparsity, the distribution, every member's options, the interval
scale, and every member's run-level check (on the options with the network's intervals scaled).
Config validation calls it for every network; ``build_network`` does not check again (nor do the
methods' builders): code that builds networks from Python without a config calls
``check_network`` first.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from mtrl_sparse.agents.optim import NetworkSetup
from mtrl_sparse.methods.base import (
    INTERVAL_SUFFIX,
    MethodEntry,
    MethodError,
    NetworkMethodSettings,
    scale_intervals,
)
from mtrl_sparse.methods.compose import compose
from mtrl_sparse.methods.registry import method_members, method_options_class
from mtrl_sparse.methods.topology import DISTRIBUTIONS, planned_leaf_densities


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


def _flag_group(entry: MethodEntry) -> str:
    return f"--methods.{entry.name}".replace("_", "-")


def check_network(
    settings: NetworkMethodSettings, options: Any = None, network: str = "network"
) -> list[MethodEntry]:
    """Validate one network's method configuration; ``MethodError`` (one line) for the first
    problem. ``options`` holds every method's options (default: all defaults). Returns the
    network's registry entries."""
    if settings.distribution not in DISTRIBUTIONS:
        raise MethodError(
            f"unknown distribution {settings.distribution!r}; accepted: {', '.join(DISTRIBUTIONS)}"
        )
    options = method_options_class()() if options is None else options
    members = check_method(settings.name, settings.sparsity, network)
    for entry in members:
        if entry.options is None:
            continue
        if not hasattr(options, entry.name):
            raise MethodError(
                f"the method options hold no {_flag_group(entry)} group: build the config for "
                "the methods registered now (mtrl_sparse.config.with_current_methods)")
        try:
            entry.check(getattr(options, entry.name))
        except ValueError as error:
            raise MethodError(f"{_flag_group(entry)}: {error}") from None
    if not settings.interval_scale > 0:
        raise MethodError(f"--{network}.interval-scale must be > 0; got "
                          f"{settings.interval_scale}")
    for entry in members:
        if entry.sequential_only and settings.phases < 2:
            raise MethodError(f"{entry.name} on the {network} acts at task boundaries; accepted: "
                              "--schedule sequential (this run is multi-task)")
        try:
            entry.check_run(settings, member_options(entry, options, settings), network)
        except ValueError as error:
            raise MethodError(str(error)) from None
        check_events_fire(entry, member_options(entry, options, settings), settings, network)
    return members


def check_events_fire(entry: MethodEntry, options: Any, settings: NetworkMethodSettings,
                      network: str) -> None:
    """``MethodError`` when an event interval of ``entry`` (a ``*every_updates`` option, scaled)
    is longer than the network's run: the method would silently never act (a Reset that never
    resets trains exactly the dense network)."""
    total = settings.total_updates
    if options is None or total is None:
        return
    for field in dataclasses.fields(options):
        every = getattr(options, field.name)
        if field.name.endswith(INTERVAL_SUFFIX) and every > total:
            flag = f"{_flag_group(entry)}.{field.name}".replace("_", "-")
            raise MethodError(
                f"{entry.name} on the {network} acts every {every} of its updates, but it makes "
                f"{total} in this run, so it would never act; lower {flag} or "
                f"--{network}.interval-scale")


def member_options(entry: MethodEntry, options: Any, settings: NetworkMethodSettings) -> Any:
    """The options ``entry`` runs with on the network of ``settings``: its field of ``options``
    with the network's interval scale applied (None for a method without options)."""
    if entry.options is None:
        return None
    return scale_intervals(getattr(options, entry.name), settings.interval_scale)


def build_network(
    settings: NetworkMethodSettings, options: Any = None, network: str = "network"
) -> NetworkSetup:
    """What the agent needs for one network: its method, LayerNorm, optimizer transforms.

    Does not validate (``check_network`` does, once, from config validation); an unknown method
    name is still a ``MethodError``.
    """
    options = method_options_class()() if options is None else options
    members = method_members(settings.name, network)
    gradient_transforms: list[optax.GradientTransformation] = []
    update_transforms: list[optax.GradientTransformation] = []
    for entry in members:
        before_adam, after_adam = entry.optimizer(member_options(entry, options, settings))
        gradient_transforms.extend(before_adam)
        update_transforms.extend(after_adam)
    reparameterizing = [m for m in members if m.reparameterize is not None]
    if len(reparameterizing) > 1:
        raise MethodError(f"at most one member of {settings.name!r} may reparameterise the "
                          f"weights; got {', '.join(m.name for m in reparameterizing)}")
    isolating = [m for m in members if m.task_weights is not None]
    return NetworkSetup(
        method=compose({m.name: m.build(settings, member_options(m, options, settings))
                        for m in members}),
        layer_norm=any(m.layer_norm for m in members),
        gradient_transforms=tuple(gradient_transforms),
        update_transforms=tuple(update_transforms),
        reparameterize=next((m.reparameterize(member_options(m, options, settings))
                             for m in reparameterizing), None),
        noisy_scales=any(m.noisy_scales for m in reparameterizing),
        compute_density=settings.compute_density,
        kernel_layers=None if settings.compute_density is None else kernel_layers(settings),
        task_weights=(member_task_weights(isolating[0], member_options(isolating[0], options,
                                                                        settings))
                      if isolating and settings.phases > 1 else None),
    )


def kernel_layers(settings: NetworkMethodSettings) -> Any:
    """``(params, maskable) -> tree of bool``: the maskable kernels whose target density is at
    most ``settings.compute_crossover`` (all of them when the sparsity is known only at run
    time), which sparse compute covers."""

    def plan(params: Any, maskable: Any) -> Any:
        planned = planned_leaf_densities(params, maskable, settings.sparsity,
                                         settings.distribution, settings.layer_slices)
        if planned is None:
            return maskable
        return jax.tree.map(lambda d: d is not None and d <= settings.compute_crossover,
                            planned, is_leaf=lambda x: x is None)

    return plan


def member_task_weights(entry: MethodEntry, options: Any) -> Any:
    """``entry``'s per-task views on a network state whose method state is the composition's
    (``{member name: state}``)."""
    views = entry.task_weights(options)
    return lambda state, num_tasks: views(
        state.replace(method_state=state.method_state[entry.name]), num_tasks)
