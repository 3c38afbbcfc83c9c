"""``gmp``: gradual magnitude pruning from a dense network to the target sparsity.

Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of pruning for model
compression" (arXiv 1710.01878); settings of Todorov et al. 2025 (arXiv 2508.06871). The sparsity
follows the cubic schedule

    s(t) = 0 for t < t_start;  s_f (1 - (1 - (t - t_start) / (t_end - t_start))^3) in between;
    s_f for t >= t_end,

with t in updates of the network. Every ``prune_every_updates`` updates from t_start, and once more
at the first such update at or after t_end (so s_f is reached), the smallest-magnitude active
weights are masked, per layer or with one threshold for the network. Per layer, s(t) is spread over
the layers by ``--distribution`` (uniform: every layer at s(t); ERK: small layers such as the
first convolution and the output layers kept denser, as the paper's lineage, Graesser et al. 2022,
prunes), and each task's slice of a head stacked over tasks is a layer of its own (a shared
threshold could strip one task's head). Pruned weights never regrow; they are zeroed with their
optimizer moments. Masks start all active; the target s_f lives in the method state so that runs
differing in it vmap into one program.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp

from mtrl_sparse.agents.net_state import MethodContext, NetState, effective_weights
from mtrl_sparse.agents.trees import mask_change_fraction
from mtrl_sparse.methods.base import (
    DISTRIBUTION_PARAMETER,
    SPARSITY_PARAMETER,
    Method,
    MethodEntry,
    NetworkMethodSettings,
)
from mtrl_sparse.methods.pruning import (
    all_active_masks,
    install_masks,
    prune_globally,
    prune_layers,
)


@dataclass(frozen=True)
class GMPOptions:
    """Gradual magnitude pruning of the networks that run ``gmp``."""

    start_fraction: float = 0.05
    """Pruning starts at t_start = start_fraction x the network's total updates (paper: 0.05)."""
    end_fraction: float = 0.80
    """The final sparsity is reached at t_end = end_fraction x total updates (paper: 0.80)."""
    prune_every_updates: int = 5000
    """Updates between two pruning events (paper: 5,000 on MT10, 500 on MiniGrid)."""
    scope: Literal["layer", "global"] = "layer"
    """layer: every maskable layer (each task's slice of a stacked head included) pruned to its
    target under s(t) and --distribution by its own magnitude threshold; global: one magnitude
    threshold over all maskable weights of the network."""


def cubic_sparsity(
    step: jax.Array, final_sparsity: jax.Array, t_start: float, t_end: float
) -> jax.Array:
    """Zhu & Gupta's scheduled sparsity s(t), float32 (a step at t_start if t_end = t_start)."""
    progress = (jnp.asarray(step, jnp.float32) - t_start) / max(t_end - t_start, 1e-9)
    progress = jnp.clip(progress, 0.0, 1.0)
    return jnp.asarray(final_sparsity, jnp.float32) * (1.0 - (1.0 - progress) ** 3)


def check_gmp_options(options: GMPOptions) -> None:
    """ValueError (one line) for options that define no schedule."""
    if not 0.0 <= options.start_fraction <= options.end_fraction <= 1.0:
        raise ValueError("gmp needs 0 <= start_fraction <= end_fraction <= 1; got "
                         f"{options.start_fraction} and {options.end_fraction}")
    if options.prune_every_updates <= 0:
        raise ValueError(f"gmp prune_every_updates must be > 0; got {options.prune_every_updates}")
    if options.scope not in ("layer", "global"):
        raise ValueError(f"gmp scope must be 'layer' or 'global'; got {options.scope!r}")


def gmp_event_updates(options: GMPOptions, total_updates: int) -> tuple[int, int]:
    """The updates of GMP's first and last pruning events: multiples of ``prune_every_updates``,
    the first at or after t_start, the last at or after t_end (where s_f is reached)."""
    every = options.prune_every_updates
    first = max(math.ceil(options.start_fraction * total_updates / every) * every, every)
    last = max(math.ceil(options.end_fraction * total_updates / every) * every, first)
    return first, last


def check_gmp_reaches_target(
    settings: NetworkMethodSettings, options: GMPOptions, network: str
) -> None:
    """GMP reaches its target at its first pruning event at or after t_end; a network whose
    interval puts that event after the run's last update would end below its target (or stay
    dense) without a word. ``options`` are the network's (intervals scaled)."""
    every, total = options.prune_every_updates, settings.total_updates
    if total is None:
        return  # no run length to check against (the builder asks for one)
    _, last_event = gmp_event_updates(options, total)
    if last_event > total:
        raise ValueError(
            f"gmp on the {network} prunes every {every} of its updates, so it would reach the "
            f"final sparsity at update {last_event}, after the {total} updates it makes in this "
            f"run; lower --methods.gmp.prune-every-updates or --{network}.interval-scale")


def gmp(settings: NetworkMethodSettings, options: GMPOptions) -> Method:
    """GMP toward ``settings.sparsity`` (may be traced) over ``settings.total_updates``."""
    total_updates = settings.run_updates("gmp")
    t_start = options.start_fraction * total_updates
    t_end = options.end_fraction * total_updates
    every = options.prune_every_updates
    first_event, last_event = gmp_event_updates(options, total_updates)

    def prune(params: Any, masks: Any, sparsity: jax.Array) -> Any:
        if options.scope == "global":
            return prune_globally(params, masks, sparsity)
        return prune_layers(params, masks, sparsity, settings.distribution,
                            settings.layer_slices)

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, dict]:
        del key
        return all_active_masks(params, maskable), {
            "target_sparsity": jnp.asarray(settings.sparsity, jnp.float32),
            "scheduled_sparsity": jnp.zeros((), jnp.float32),
            "mask_change": jnp.zeros((), jnp.float32),
            "events": jnp.zeros((), jnp.int32),
        }

    def transform(
        net_state: NetState, step: jax.Array, key: jax.Array, context: MethodContext
    ) -> NetState:
        del key

        def prune_event(state: NetState) -> NetState:
            method_state = state.method_state
            sparsity = cubic_sparsity(step, method_state["target_sparsity"], t_start, t_end)
            masks = prune(effective_weights(state), state.masks, sparsity)
            pruned = install_masks(state, masks, context.optimizer)
            return pruned.replace(method_state={
                **method_state,
                "scheduled_sparsity": sparsity,
                "mask_change": mask_change_fraction(state.masks, masks),
                "events": method_state["events"] + 1,
            })

        is_event = (step % every == 0) & (step >= first_event) & (step <= last_event)
        return jax.lax.cond(is_event, prune_event, lambda state: state, net_state)

    return Method(init=init, transform=transform)


ENTRY = MethodEntry(
    name="gmp",
    kind="sparsity",
    description="gradual magnitude pruning from dense to --sparsity on a cubic schedule",
    source="Zhu & Gupta 2017 (arXiv 1710.01878); Todorov et al. 2025 (settings)",
    build=gmp,
    options=GMPOptions,
    check=check_gmp_options,
    check_run=check_gmp_reaches_target,
    parameters=(SPARSITY_PARAMETER, DISTRIBUTION_PARAMETER),
)
