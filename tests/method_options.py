"""Method options for tests: every event interval 1, so that each update exercises every event."""

from __future__ import annotations

import dataclasses

from mtrl_sparse.methods.registry import METHODS, MethodOptions

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
