"""``app``: Anytime Progressive Pruning, SNIP saliency pruning at every megabatch.

Misra et al. 2022, "APP: Anytime Progressive Pruning" (arXiv 2204.01640), with the defaults of
its authors' code (landskape-ai/Progressive-Pruning, ``main_anytime_train.py`` with ``--pruner
snip --scope global``; where that code's literal behaviour departs from the paper, e.g. it
prunes convolutions only and scores the first megabatch's data, ``docs/pages/methods/app.md`` lists
it). The published algorithm, with its defaults:

1. Data arrives in M megabatches from one stationary distribution (ALMA; the code's default
   trains each megabatch on everything seen so far).
2. When megabatch k (k = 0..M-1) arrives, score every weight of the current (already pruned)
   network by its SNIP saliency |g * w| (Lee et al. 2019, arXiv 1810.02340), g the loss gradient
   w.r.t. the weight on the megabatch's SNIP data (20% of it in the code).
3. Keep the ``d_k`` share of all prunable weights with the highest saliency, one threshold for the
   whole network (global scope), with ``d_k = 0.8^linspace(1, s, M)[k]`` (the code's geometric
   schedule; ``s = 4.5`` in the paper's runs, 1 - 0.8^4.5 = 63.4% final sparsity).
4. Train on the megabatch with the pruned network; the next megabatch starts from these weights.

Here, step by step:

- Megabatches (step 1) are ``megabatches`` equal chunks of the run's updates under the multi-task
  schedule, where every megabatch holds every task: APP's own setting (a stationary stream), and
  the one this method is faithful to. The replay buffer of SAC holds everything seen so far (the
  code's cumulative replay) as long as the run fits its capacity; PPO learns on-policy from its
  current rollouts only. Under a sequential schedule each task is one megabatch
  (``MethodContext.phase``): an adaptation, see below.
- The saliency (step 2) is ``|w * mean_j g_j|`` over the first ``saliency_updates`` updates of the
  megabatch (the loss gradient over their batches; default 1, the first batch), ``w`` the weights
  the last of those gradients was taken at (before that update's optimizer step). Only active
  weights are ranked (inactive ones score -inf), so the masks are nested:
  ``M_k = M_(k-1) AND top(saliency_k)``; pruned weights never regrow.
- The density schedule (step 3) is ``d_k = d_0 * (d_f / d_0)^(k / (M - 1))`` from
  ``first_density`` ``d_0`` to ``d_f = 1 - sparsity`` (``d_0`` at once for ``M = 1``); the code's
  ``0.8^linspace(1, s, M)`` is ``first_density = 0.8`` with ``--sparsity 1 - 0.8^s`` (0.634 for
  s = 4.5). The target lives in the method state so runs differing in it vmap into one program.
- Ranking (step 3), multi-task schedule: one global threshold, as the code; weights of equal
  saliency (e.g. 0, where no gradient reached) rank by |w|, never by position.

Adaptations to multi-task RL, each with its reason:

- Both networks of SAC (actor, twin critics) and of PPO (actor, critic) run APP, each on its own
  loss's gradient and its own count of updates; the per-task heads take part in the ranking like
  any other weights (every task has data in every megabatch of the multi-task schedule).
- Sequential schedule: a megabatch holds one task, so the heads of every other task get no
  gradient, saliency 0. A global ranking would prune them to nothing (and with them, at the next
  task, every weight the next task's head feeds). So each layer, and each task's slice of a
  stacked head, is ranked on its own (the densities of ``--distribution`` for the network's
  ``d_k``, as GMP does), equal saliencies by |w|: a head without data keeps its largest weights.
  APP's paper has no sequence of tasks; this setting is an extension, not a reproduction.
- The code's cumulative replay of earlier megabatches does not apply to PPO (on-policy: it
  learns from its current rollouts only; ``--replay cumulative`` is refused for it); under SAC's
  multi-task schedule the replay buffer already holds every task's past data. Under SAC's
  sequential schedule the buffer is emptied at each task by default (``--replay current``,
  Continual World's protocol, which the CW10 presets reproduce); ``--replay cumulative`` keeps
  every task's transitions and samples uniformly from all of them, as the code's cumulative
  megabatches do (any method can use it). The default stays Continual World's until a measured
  comparison of the two on CW10 settles it (not run yet: CW10 learns little on a CPU budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from mtrl_sparse.agents.net_state import MethodContext, NetState, effective_weights
from mtrl_sparse.agents.trees import is_none, mask_change_fraction
from mtrl_sparse.methods.base import (
    SPARSITY_PARAMETER,
    Method,
    MethodEntry,
    NetworkMethodSettings,
)
from mtrl_sparse.methods.pruning import (
    active_magnitudes,
    all_active_masks,
    install_masks,
    keep_top_globally,
    prune_layers,
    weight_magnitudes,
)


@dataclass(frozen=True)
class APPOptions:
    """Anytime progressive pruning of the networks that run ``app``."""

    first_density: float = 0.8
    """Density after the first megabatch's pruning (paper: 0.8 = 0.8^1)."""
    megabatches: int = 8
    """Multi-task schedule: the run's updates split into this many equal megabatches, each
    pruning once (a sequential schedule uses its tasks instead)."""
    saliency_updates: int = 1
    """Updates at the start of a megabatch whose gradients average into its saliency (1: the
    first batch only, as SNIP)."""


def check_app_options(options: APPOptions) -> None:
    """ValueError (one line) for options that define no schedule."""
    if not 0.0 < options.first_density <= 1.0:
        raise ValueError(f"app first_density must be in (0, 1]; got {options.first_density}")
    if options.megabatches < 1 or options.saliency_updates < 1:
        raise ValueError("app megabatches and saliency_updates must be >= 1; got "
                         f"{options.megabatches} and {options.saliency_updates}")


def run_megabatches(settings: NetworkMethodSettings, options: APPOptions) -> int:
    """The run's megabatches: its tasks under a sequential schedule, else ``megabatches``."""
    return settings.phases if settings.phases > 1 else options.megabatches


def check_app_run(settings: NetworkMethodSettings, options: APPOptions, network: str) -> None:
    """The schedule must fall from ``first_density`` to the target (masks never regrow), and
    every megabatch must hold its saliency updates, or the last would never prune."""
    final_density = 1.0 - float(settings.sparsity)
    if final_density > options.first_density:
        raise ValueError(
            f"app on the {network}: --sparsity {settings.sparsity:g} leaves a final density "
            f"{final_density:g} above --methods.app.first-density {options.first_density:g}, "
            "and APP only prunes; accepted: --sparsity >= 1 - first-density")
    megabatches = run_megabatches(settings, options)
    total = settings.total_updates
    if total is not None and total // megabatches < options.saliency_updates:
        raise ValueError(
            f"app on the {network} splits its {total} updates into {megabatches} megabatches of "
            f"{total // megabatches}, fewer than --methods.app.saliency-updates "
            f"{options.saliency_updates}; lower it or --methods.app.megabatches")


def geometric_density(k: jax.Array, megabatches: int, first: float, final: jax.Array
                      ) -> jax.Array:
    """``d_k`` of the module docstring, float32 (``k`` may be traced)."""
    if megabatches == 1:
        return jnp.asarray(final, jnp.float32)
    ratio = jnp.asarray(final, jnp.float32) / first
    return first * ratio ** (jnp.asarray(k, jnp.float32) / (megabatches - 1))


def snip_saliency(params: Any, grads: Any, masks: Any) -> Any:
    """``|g * w|`` at the active weights of every masked leaf, -inf at the inactive ones (which
    never rank above an active one); None at unmasked leaves."""
    return jax.tree.map(lambda m, w, g: None if m is None else active_magnitudes(g * w, m),
                        masks, params, grads, is_leaf=is_none)


def keep_top_saliency(weights: Any, saliency: Any, masks: Any, density: jax.Array,
                      settings: NetworkMethodSettings, per_layer: bool) -> Any:
    """Masks keeping the ``density`` share of the maskable weights with the highest
    ``saliency`` (equal saliencies by |w|): one global threshold, or with ``per_layer`` each
    layer and task slice at its share of ``density`` by ``settings.distribution``."""
    if per_layer:
        return prune_layers(weights, masks, 1.0 - density, settings.distribution,
                            settings.layer_slices, scores=saliency)
    return keep_top_globally(saliency, masks, density,
                             tie_break=weight_magnitudes(masks, weights))


def app(settings: NetworkMethodSettings, options: APPOptions) -> Method:
    """APP toward ``settings.sparsity`` (may be traced) over the run's megabatches."""
    sequential = settings.phases > 1
    megabatches = run_megabatches(settings, options)
    megabatch_updates = max(settings.run_updates("app") // megabatches, 1)
    # With one saliency update the event's own gradient is the saliency's: nothing to
    # accumulate, and no parameter-sized sum in the state.
    accumulates = options.saliency_updates > 1

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, dict]:
        del key
        masks = all_active_masks(params, maskable)
        return masks, {
            "target_sparsity": jnp.asarray(settings.sparsity, jnp.float32),
            "megabatch": jnp.full((), -1, jnp.int32),
            "collected": jnp.zeros((), jnp.int32),
            "grad_sum": jax.tree.map(
                lambda m, p: None if m is None or not accumulates else jnp.zeros_like(p),
                masks, params, is_leaf=is_none),
            "density": jnp.ones((), jnp.float32),
            "mask_change": jnp.zeros((), jnp.float32),
            "events": jnp.zeros((), jnp.int32),
        }

    def current_megabatch(step: jax.Array, context: MethodContext) -> jax.Array:
        if sequential:
            return jnp.asarray(context.phase, jnp.int32)
        return jnp.minimum((step - 1) // megabatch_updates, megabatches - 1).astype(jnp.int32)

    def transform(
        net_state: NetState, step: jax.Array, key: jax.Array, context: MethodContext
    ) -> NetState:
        del key
        method_state = net_state.method_state
        megabatch = current_megabatch(step, context)
        pending = megabatch > method_state["megabatch"]
        grad_sum = method_state["grad_sum"]
        if accumulates:
            grad_sum = jax.lax.cond(  # a real branch: no work on the updates between events
                pending,
                lambda sums: jax.tree.map(lambda total, g: None if total is None else total + g,
                                          sums, context.dense_grads, is_leaf=is_none),
                lambda sums: sums, grad_sum)
        collected = method_state["collected"] + pending.astype(jnp.int32)
        state = net_state.replace(method_state={**method_state, "grad_sum": grad_sum,
                                                "collected": collected})

        def prune_event(state: NetState) -> NetState:
            ms = state.method_state
            mean_grads = (jax.tree.map(lambda total: total / ms["collected"], ms["grad_sum"])
                          if accumulates else context.dense_grads)
            density = geometric_density(megabatch, megabatches, options.first_density,
                                        1.0 - ms["target_sparsity"])
            # SNIP pairs the gradient with the weights it was taken at: those before the step.
            weights = effective_weights(state.replace(params=context.params_before))
            masks = keep_top_saliency(weights, snip_saliency(weights, mean_grads, state.masks),
                                      state.masks, density, settings, per_layer=sequential)
            pruned = install_masks(state, masks, context.optimizer)
            return pruned.replace(method_state={
                **ms,
                "megabatch": megabatch,
                "collected": jnp.zeros((), jnp.int32),
                "grad_sum": jax.tree.map(jnp.zeros_like, ms["grad_sum"]),
                "density": density,
                "mask_change": mask_change_fraction(state.masks, masks),
                "events": ms["events"] + 1,
            })

        is_event = pending & (collected >= options.saliency_updates)
        return jax.lax.cond(is_event, prune_event, lambda s: s, state)

    def dense_grads_due(net_state: NetState, step: jax.Array, context: MethodContext):
        """The saliency's updates: those of a megabatch not yet pruned for."""
        return current_megabatch(step, context) > net_state.method_state["megabatch"]

    return Method(init=init, transform=transform, dense_grads_due=dense_grads_due)


ENTRY = MethodEntry(
    name="app",
    kind="sparsity",
    description="anytime progressive pruning: SNIP-saliency pruning at every megabatch on a "
                "geometric density schedule, one global threshold (per layer and task slice "
                "under a sequential schedule, where each task is a megabatch)",
    source="Misra et al. 2022 (arXiv 2204.01640); SNIP: Lee et al. 2019 (arXiv 1810.02340)",
    build=app,
    options=APPOptions,
    check=check_app_options,
    check_run=check_app_run,
    parameters=(SPARSITY_PARAMETER,),
    experimental="the saliency comes from the first --methods.app.saliency-updates batches of a "
                 "megabatch, not from 20% of its data as the authors' code; under SAC's "
                 "sequential schedule earlier tasks are replayed only with --replay cumulative "
                 "(the authors' code replays every earlier megabatch; the default is Continual "
                 "World's emptied buffer); the sequential schedule ranks per layer and task "
                 "slice (an extension: APP's setting is one stationary stream, the multi-task "
                 "schedule); not yet measured against GMP over several seeds",
)
