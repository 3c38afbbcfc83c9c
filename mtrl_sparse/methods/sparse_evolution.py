"""``set`` and ``rigl``: dynamic sparse training at a fixed sparsity by drop and regrow.

- SET, Sparse Evolutionary Training: Mocanu et al. 2018, "Scalable training of artificial neural
  networks with adaptive sparse connectivity inspired by network science" (Nature Communications
  9, 2383). Regrowth at uniformly random inactive positions.
- RigL, Rigging the Lottery: Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners"
  (ICML, arXiv 1911.11134). Regrowth where the gradient w.r.t. the effective weights
  (``context.dense_grads``) is largest in magnitude; drop fraction decayed by a cosine.

Both start from a random topology at the target sparsity (per-layer ``uniform`` or ``erk``). Every
``update_every_updates`` updates up to ``end_fraction`` of the run, each layer drops the fraction
zeta(t) of its smallest-magnitude active weights and grows as many among the weights inactive before
the drop, so its number of active weights stays constant. zeta(t) is ``drop_fraction`` (constant) or
``drop_fraction * (1 + cos(pi t / t_end)) / 2`` (cosine). Grown weights start at zero; dropped and
grown weights get fresh optimizer moments. Settings of Todorov et al. 2025 (arXiv 2508.06871).
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
from mtrl_sparse.methods.pruning import drop_and_regrow, install_masks
from mtrl_sparse.methods.topology import random_masks

DropDecay = Literal["constant", "cosine"]


@dataclass(frozen=True)
class SETOptions:
    """Sparse Evolutionary Training of the networks that run ``set``."""

    update_every_updates: int = 2000
    """Updates between two drop-and-regrow events (paper: 2,000)."""
    drop_fraction: float = 0.3
    """zeta: fraction of each layer's active weights dropped and regrown per event (paper: 0.3)."""
    drop_fraction_decay: DropDecay = "constant"
    """constant: zeta at every event; cosine: zeta (1 + cos(pi t / t_end)) / 2."""
    end_fraction: float = 1.0
    """No event after t_end = end_fraction x the network's total updates."""


@dataclass(frozen=True)
class RigLOptions:
    """RigL (gradient-based regrowth) of the networks that run ``rigl``."""

    update_every_updates: int = 2000
    """Updates between two drop-and-regrow events (as SET's 2,000 in the reference paper)."""
    drop_fraction: float = 0.3
    """Initial fraction of each layer's active weights dropped and regrown per event (RigL: 0.3)."""
    drop_fraction_decay: DropDecay = "cosine"
    """cosine (RigL): zeta (1 + cos(pi t / t_end)) / 2; constant: zeta at every event."""
    end_fraction: float = 0.75
    """No event after t_end = end_fraction x the network's total updates (RigL: 0.75)."""


def drop_fraction_at(
    step: jax.Array, drop_fraction: float, decay: DropDecay, t_end: float
) -> jax.Array:
    """The fraction zeta(t) dropped at update ``step``, float32."""
    if decay == "constant":
        return jnp.asarray(drop_fraction, jnp.float32)
    progress = jnp.asarray(step, jnp.float32) / max(t_end, 1e-9)
    return drop_fraction * (1.0 + jnp.cos(jnp.pi * progress)) / 2.0


def check_evolution_options(options: SETOptions | RigLOptions, name: str) -> None:
    """ValueError (one line) for options that define no drop-and-regrow schedule."""
    if options.update_every_updates <= 0:
        raise ValueError(f"{name} update_every_updates must be > 0; "
                         f"got {options.update_every_updates}")
    if not 0.0 <= options.drop_fraction <= 1.0 or not 0.0 <= options.end_fraction <= 1.0:
        raise ValueError(f"{name} drop_fraction and end_fraction must be in [0, 1]; got "
                         f"{options.drop_fraction} and {options.end_fraction}")
    if options.drop_fraction_decay not in ("constant", "cosine"):
        raise ValueError(f"{name} drop_fraction_decay must be 'constant' or 'cosine'; "
                         f"got {options.drop_fraction_decay!r}")


def sparse_evolution(
    settings: NetworkMethodSettings, options: SETOptions | RigLOptions, name: str,
    grow_scores: Callable[[NetState, jax.Array, MethodContext], Any],
    reads_dense_grads: bool = False,
) -> Method:
    """Random topology, then periodic drop and regrow; ``grow_scores(state, key, context)`` ranks
    the candidates for regrowth (a tree congruent with the params; ``reads_dense_grads``: it
    reads ``context.dense_grads``, needed at the events)."""
    every = options.update_every_updates
    t_end = options.end_fraction * settings.run_updates(name)
    last_event = math.floor(t_end / every) * every

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, dict]:
        masks = random_masks(params, maskable, settings.sparsity, settings.distribution, key,
                             settings.layer_slices)
        return masks, {
            "target_sparsity": jnp.asarray(settings.sparsity, jnp.float32),
            "drop_fraction": jnp.zeros((), jnp.float32),
            "mask_change": jnp.zeros((), jnp.float32),
            "events": jnp.zeros((), jnp.int32),
        }

    def transform(
        net_state: NetState, step: jax.Array, key: jax.Array, context: MethodContext
    ) -> NetState:
        def evolve_event(state: NetState) -> NetState:
            zeta = drop_fraction_at(step, options.drop_fraction, options.drop_fraction_decay,
                                    t_end)
            masks = drop_and_regrow(effective_weights(state), state.masks,
                                    grow_scores(state, key, context),
                                    zeta, settings.layer_slices)
            evolved = install_masks(state, masks, context.optimizer)
            return evolved.replace(method_state={
                **state.method_state,
                "drop_fraction": zeta,
                "mask_change": mask_change_fraction(state.masks, masks),
                "events": state.method_state["events"] + 1,
            })

        return jax.lax.cond(is_event(step), evolve_event, lambda state: state, net_state)

    def is_event(step: jax.Array) -> jax.Array:
        return (step % every == 0) & (step >= every) & (step <= last_event)

    def dense_grads_due(net_state: NetState, step: jax.Array, context: MethodContext):
        del net_state, context
        return is_event(step)

    return Method(init=init, transform=transform,
                  dense_grads_due=dense_grads_due if reads_dense_grads else None)


def random_scores(state: NetState, key: jax.Array, context: MethodContext) -> Any:
    """Uniform random grow scores on the masked leaves (SET's random regrowth)."""
    del context
    masks, treedef = jax.tree.flatten(state.masks, is_leaf=lambda x: x is None)
    keys = iter(jax.random.split(key, max(len(masks), 1)))
    return jax.tree.unflatten(treedef, [
        None if m is None else jax.random.uniform(next(keys), m.shape) for m in masks])


def gradient_scores(state: NetState, key: jax.Array, context: MethodContext) -> Any:
    """|gradient w.r.t. the effective weights|, defined at inactive weights too (RigL)."""
    del state, key
    return jax.tree.map(jnp.abs, context.dense_grads)


def sparse_evolution_set(settings: NetworkMethodSettings, options: SETOptions) -> Method:
    """SET at ``settings.sparsity`` (may be traced) with ``settings.distribution``."""
    return sparse_evolution(settings, options, "set", random_scores)


def rigl(settings: NetworkMethodSettings, options: RigLOptions) -> Method:
    """RigL at ``settings.sparsity`` (may be traced) with ``settings.distribution``."""
    return sparse_evolution(settings, options, "rigl", gradient_scores, reads_dense_grads=True)


SET_ENTRY = MethodEntry(
    name="set",
    kind="sparsity",
    description="sparse evolutionary training: drop smallest weights, regrow at random",
    source="Mocanu et al. 2018 (Nature Communications 9, 2383)",
    build=sparse_evolution_set,
    options=SETOptions,
    check=lambda o: check_evolution_options(o, "set"),
    parameters=(SPARSITY_PARAMETER, DISTRIBUTION_PARAMETER),
)

RIGL_ENTRY = MethodEntry(
    name="rigl",
    kind="sparsity",
    description="drop smallest weights, regrow where the dense gradient is largest",
    source="Evci et al. 2020, Rigging the Lottery (ICML, arXiv 1911.11134)",
    build=rigl,
    options=RigLOptions,
    check=lambda o: check_evolution_options(o, "rigl"),
    parameters=(SPARSITY_PARAMETER, DISTRIBUTION_PARAMETER),
)
