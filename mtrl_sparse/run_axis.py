"""What a vmapped group of runs needs whatever its agent: which runs may share one program, the
sharding of the run axis over devices, and stacking runs into (and slicing them out of) arrays
with a leading run axis. ``on_policy_group`` and ``off_policy_group`` build on it."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtrl_sparse.config import ConfigError, RunConfig

VARYING_FIELDS = ("seed", "run_dir", "wandb")
"""Config fields besides the target sparsities in which the runs of one group may differ (a
sweep's runs have their own W&B names)."""


def check_same_program(configs: list[RunConfig]) -> None:
    """``ConfigError`` unless the runs (of any agent) can share one program: configs equal but
    for ``VARYING_FIELDS`` and target sparsities (config validation has already made a sparse
    method's sparsity positive and a dense one's zero)."""
    base = configs[0]

    def shared(config: RunConfig) -> RunConfig:
        fixed = {f: getattr(base, f) for f in VARYING_FIELDS}
        fixed.update(sparsity=base.sparsity,
                     actor=dataclasses.replace(config.actor, sparsity=base.actor.sparsity),
                     critic=dataclasses.replace(config.critic, sparsity=base.critic.sparsity))
        return dataclasses.replace(config, **fixed)

    for config in configs[1:]:
        if shared(config) != shared(base):
            raise ConfigError("runs vmapped together may differ only in seed and target "
                              "sparsity")


def run_axis_sharding(num_runs: int) -> NamedSharding | None:
    """Where several devices are present and divide the run count: arrays with a leading run
    axis split over them (each device computes its share of the runs); otherwise None (one
    device holds every run)."""
    devices = jax.devices()
    if len(devices) < 2 or num_runs % len(devices):
        return None
    return NamedSharding(Mesh(np.array(devices), ("runs",)), PartitionSpec("runs"))


def replicated(sharding: NamedSharding) -> NamedSharding:
    """The same devices, every array whole on each (the shared update counters)."""
    return NamedSharding(sharding.mesh, PartitionSpec())


def stack_runs(trees: list[Any]) -> Any:
    """K pytrees of the same structure -> one pytree, each leaf stacked on a new leading run
    axis (K, ...)."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def run_slice(tree: Any, index: int) -> Any:
    """Run ``index`` of a pytree whose leaves have a leading run axis (K, ...) -> (...)."""
    return jax.tree.map(lambda leaf: leaf[index], tree)
