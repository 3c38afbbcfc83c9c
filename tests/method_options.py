"""Method options for tests: every event interval 1, so that each update exercises every event;
and tiny SACs whose networks run a method with them."""

from __future__ import annotations

import dataclasses

from mtrl_sparse.agents.sac import SAC, SACConfig, make_sac
from mtrl_sparse.methods.base import NetworkMethodSettings
from mtrl_sparse.methods.registry import METHODS, MethodOptions, build_network

INTERVAL_FIELDS = ("prune_every_updates", "update_every_updates", "every_updates")


def options_firing_every_update() -> MethodOptions:
    """Defaults of every method's options with intervals 1 and schedules starting at update 0."""
    values = {}
    for entry in METHODS.values():
        if entry.options is None:
            continue
        defaults = entry.options()
        changes = {f: 1 for f in INTERVAL_FIELDS if hasattr(defaults, f)}
        if hasattr(defaults, "start_fraction"):
            changes["start_fraction"] = 0.0
        values[entry.name] = dataclasses.replace(defaults, **changes)
    return MethodOptions(**values)


def sac_firing_every_update(
    name: str, sparsity, config: SACConfig, num_tasks: int, obs_dim: int, action_dim: int,
) -> SAC:
    """SAC whose actor and critic both run ``name`` at ``sparsity`` (may be traced) over a
    4-update run, with every event firing at every update."""
    settings = NetworkMethodSettings(name, sparsity, "erk", total_updates=4)
    setup = build_network(settings, options_firing_every_update())
    return make_sac(config, num_tasks, obs_dim, action_dim, setup, setup)
