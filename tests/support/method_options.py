"""Method options for tests: every event interval 1, so that each update exercises every event;
and tiny SACs whose networks run a method with them."""

from __future__ import annotations

import dataclasses
from typing import Any

from mtrl_sparse.agents.sac import SAC, SACConfig, make_sac
from mtrl_sparse.methods.base import INTERVAL_SUFFIX, NetworkMethodSettings
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.methods.registry import METHODS, method_options_class


def interval_fields(options: type) -> tuple[str, ...]:
    """The interval fields of a method's options class (the registry's ``INTERVAL_SUFFIX``)."""
    return tuple(f.name for f in dataclasses.fields(options) if f.name.endswith(INTERVAL_SUFFIX))


def options_firing_every_update() -> Any:
    """Defaults of every registered method's options (the current ``method_options_class()``)
    with intervals 1 and schedules starting at update 0."""
    values = {}
    for entry in METHODS.values():
        if entry.options is None:
            continue
        defaults = entry.options()
        changes = {f: 1 for f in interval_fields(entry.options)}
        if hasattr(defaults, "start_fraction"):
            changes["start_fraction"] = 0.0
        values[entry.name] = dataclasses.replace(defaults, **changes)
    return method_options_class()(**values)


def covering_compositions() -> tuple[str, ...]:
    """Compositions, derived from the registry's kinds, in which every registered method except
    ``dense`` appears: each sparsity method with one plasticity method and one regulariser in
    turn, and the plasticity methods together on a dense network (those that reparameterise
    the weights, of which a network takes one, each with all the others)."""
    def of(kind: str) -> list[str]:
        return [name for name, entry in METHODS.items() if entry.kind == kind]

    plasticity, regularizers = of("plasticity"), of("regularizer")
    compositions = [
        "+".join([sparse,
                  *([plasticity[i % len(plasticity)]] if plasticity else []),
                  *([regularizers[i % len(regularizers)]] if regularizers else [])])
        for i, sparse in enumerate(of("sparsity"))
    ]
    plain = [p for p in plasticity if METHODS[p].reparameterize is None]
    reparameterizing = [p for p in plasticity if METHODS[p].reparameterize is not None]
    together = ["+".join([*plain, r]) for r in reparameterizing] or (
        ["+".join(plain)] if plain else [])
    return (*compositions, *together)


def sac_firing_every_update(
    name: str, sparsity, config: SACConfig, num_tasks: int, obs_dim: int, action_dim: int,
    compute_density: float | None = None,
) -> SAC:
    """SAC whose actor and critic both run ``name`` at ``sparsity`` (may be traced) over a
    4-update run, with every event firing at every update (``compute_density``: sparse
    compute, see ``NetworkMethodSettings``)."""
    settings = NetworkMethodSettings(name, sparsity, "erk", total_updates=4,
                                     compute_density=compute_density,
                                     batch_size=config.batch_size)
    setup = build_network(settings, options_firing_every_update())
    return make_sac(config, num_tasks, obs_dim, action_dim, setup, setup)
