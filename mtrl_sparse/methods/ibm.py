"""``ibm``: Information-Bottleneck Masked sub-networks (Chen et al., "Continual Learning via
Information Bottleneck Masked Sub-networks", arXiv 2312.00840), as the authors' code does it
(zackschen/IBM-Net: ``models/ib.py``, ``backbone/Alexnet_IB.py``), with the gates and bound of
VIBNet (Dai et al. 2018, "Compressing Neural Networks using the Variational Information
Bottleneck").

IBM, step by step (the authors' defaults):

1. Every weight ``w`` of the backbone has a gate ``z ~ N(mu, sigma^2)`` (``mu ~ N(1, 0.01)``,
   ``log sigma^2 ~ N(-9, 0.01)``); the task heads are plain linear layers, and the backbone has
   no biases and no affine norms. A training forward pass computes with ``w * (mu + eps *
   sigma)``, one ``eps ~ N(0, 1)`` per weight and pass.
2. The loss is the task's loss plus ``kl_fac`` (1e-3) times the bound
   ``sum over layers of svd_ratio_l * 0.5 * sum log(1 + mu^2 / (sigma^2 + 1e-8)) / B``, ``B``
   the batch size. ``svd_ratio_l`` is recomputed once per task (at the task's first epoch):
   the share of layer l's output channels needed to explain 97% of its output variance
   (singular values of the centred outputs on the epoch's batches, averaged).
3. One Adam (1e-3), made anew for each task, trains weights, gates and heads together; the
   gradients of weights frozen by earlier tasks are zeroed before each step, but their gates
   keep training (under the penalty).
4. At the task's end its hard mask is ``log sigma^2 - log(mu^2 + 1e-8) < 0`` (``mu^2 >
   sigma^2``) over every weight, frozen ones included (a task may re-use or leave out earlier
   tasks' weights); the task keeps its mask and a snapshot of its gate scale ``mu + sigma``.
   The frozen set becomes the union of all tasks' masks. Gates outside it are re-initialised;
   gates inside keep their values.
5. Task ``t`` is evaluated with ``w * (mu_t + sigma_t) * mask_t``: its weights are frozen, so
   its outputs never change afterwards.

Here, on RL networks (PPO's and SAC's actor and critic), the adaptations and why:

- Gated: the trunk's kernels (the maskable leaves no task owns). The per-task heads (and a
  MoE/MOORE task encoder's rows, ``NetworkMethodSettings.task_leaves``) are ungated, as the
  authors' heads; a task's own entries are frozen at its end (the authors' old heads only
  stop receiving gradient; Adam's momentum would still move them).
- The trunk's biases and norms (the authors' backbone has none): trainable by every task, each
  task keeping its own snapshot of them, so they neither freeze the trunk after the first task
  nor change an earlier task's outputs.
- Snapshots: task ``t``'s whole effective network at its end (gated kernels ``w * (mu_t +
  sigma_t) * mask_t``, its head, the biases and norms), from which it acts ever after; the task
  being trained acts with the same rule on its current gates, so ending a task does not change
  its policy. The views equal the authors' (``w`` is frozen inside ``mask_t``).
- Optimizers: the network's Adam trains the weights (reset at every boundary: one per task);
  the gates have their own Adam (``gate_learning_rate``, reset at every boundary), as the
  framework keeps a network's scales apart from its optimizer. The authors use one Adam at
  1e-3 for both.
- Frozen weights are restored after every optimizer step (from ``MethodContext.params_before``),
  which equals zeroing their gradient; the boundary's first update (taken before the method
  sees the new phase) is undone on what freezes then.
- SVD ratios: from the sown post-activation outputs of the layer (ReDo's; the authors take the
  pre-activation outputs) on the task's first update's batch (the authors average the first
  epoch's batches); a gated kernel without a sown output layer keeps ratio 1.
- Gate initialisation: constant ``init_mu`` and ``init_log_var`` (the authors add N(0, 0.01)
  jitter; the weights' own random initialisation already breaks the symmetry).
- Multi-task runs (one phase): the gated network trains with its penalty; nothing freezes.

Logged per network: ``ibm/kept_fraction`` (the share of what the task can use, trunk kernels
plus its own head, in its current sub-network), ``ibm/trunk_kept_fraction``,
``ibm/frozen_fraction`` (the trunk kernels' share frozen by the tasks so far), per gated layer
``ibm/layers/<layer>/kept`` and ``frozen``, ``ibm/svd_ratio/...`` and ``ibm/consolidations``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mtrl_sparse.agents.net_state import (
    MethodContext,
    NetState,
    apply_masks,
    fresh_adam,
    unit_scales_where_masked,
)
from mtrl_sparse.agents.tree_paths import get_path, path_str
from mtrl_sparse.agents.trees import is_none
from mtrl_sparse.methods.base import Method, MethodEntry, NetworkMethodSettings
from mtrl_sparse.methods.topology import leaf_slices, no_masks, task_index

KL_EPSILON = 1e-8


@dataclass(frozen=True)
class IBMOptions:
    """IBM's gates on the networks that run ``ibm`` (the authors' defaults)."""

    kl_weight: float = 1e-3
    """The weight of the information-bottleneck penalty (the authors' ``kl_fac``; the penalty
    is divided by the batch size)."""
    gate_learning_rate: float = 1e-3
    """Adam's learning rate for the gates' means and log-variances (the authors' one Adam)."""
    init_mu: float = 1.0
    """Initial gate mean (and of the gates re-initialised at a boundary)."""
    init_log_var: float = -9.0
    """Initial gate log-variance."""
    svd_variance: float = 0.97
    """Each gated layer's penalty is scaled by the share of its output channels that explain
    this share of its output variance (0: no scaling)."""


def check_ibm_options(options: IBMOptions) -> None:
    """ValueError (one line) for a negative penalty, a non-positive learning rate, a zero
    initial mean (a zero gate passes no gradient to its weight) or a variance share outside
    [0, 1]."""
    if options.kl_weight < 0 or options.gate_learning_rate <= 0 or options.init_mu == 0:
        raise ValueError("ibm needs kl_weight >= 0, gate_learning_rate > 0 and init_mu != 0; got "
                         f"{options.kl_weight}, {options.gate_learning_rate}, {options.init_mu}")
    if not 0.0 <= options.svd_variance <= 1.0:
        raise ValueError(f"ibm svd_variance must be in [0, 1]; got {options.svd_variance}")


def check_ibm_run(settings: NetworkMethodSettings, options: IBMOptions, network: str) -> None:
    """IBM's gates are the network's scales, and it freezes parameters itself: no Sign-In (its
    scales) and no sparse tuning (its own freezing) beside it."""
    clash = {"sign_in", "sparse_tune"} & set(settings.name.split("+"))
    if clash:
        raise ValueError(f"ibm on the {network} cannot be combined with {', '.join(sorted(clash))}"
                         " (ibm trains the scales and freezes parameters itself)")


def gate_scales(weights: Any, maskable: Any, init_mu: float) -> tuple[Any, Any]:
    """``(params, scales)`` at initialisation: every maskable leaf's scale ``init_mu`` (None
    elsewhere) and its params ``weights / init_mu``, so the network starts as initialised.
    The per-task heads get a scale too, which the method never trains (they are ungated)."""
    scales = jax.tree.map(lambda x, f: jnp.full(x.shape, init_mu, x.dtype) if f else None,
                          weights, maskable)
    params = jax.tree.map(lambda s, x: x if s is None else x / init_mu, scales, weights,
                          is_leaf=is_none)
    return params, scales


# ----------------------------------------------------------------------------- the bound


def kl_penalty(mu: jax.Array, log_var: jax.Array) -> jax.Array:
    """0.5 * sum log(1 + mu^2 / (sigma^2 + 1e-8)) of one leaf's gates, ()."""
    return 0.5 * jnp.sum(jnp.log1p(jnp.square(mu) / (jnp.exp(log_var) + KL_EPSILON)))


def kl_gradients(mu: jax.Array, log_var: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The gradients of ``kl_penalty`` w.r.t. ``mu`` and ``log_var``, elementwise."""
    var = jnp.exp(log_var) + KL_EPSILON
    total = var + jnp.square(mu)
    return mu / total, -0.5 * jnp.square(mu) * (var - KL_EPSILON) / (var * total)


def kept(mu: jax.Array, log_var: jax.Array) -> jax.Array:
    """The gates' hard mask: ``log sigma^2 - log(mu^2 + 1e-8) < 0``, bool."""
    return log_var - jnp.log(jnp.square(mu) + KL_EPSILON) < 0


def svd_ratio(outputs: jax.Array, variance: float) -> jax.Array:
    """Share of the C channels of ``outputs`` (..., C) whose singular values, largest first,
    explain less than ``variance`` of the centred outputs' variance (the authors' count), ()."""
    x = outputs.reshape(-1, outputs.shape[-1]).astype(jnp.float32)
    x = x - jnp.mean(x, axis=0)
    power = jnp.square(jnp.linalg.svd(x, compute_uv=False))
    shares = jnp.cumsum(power) / jnp.maximum(jnp.sum(power), 1e-30)
    return (jnp.sum(shares < variance) / outputs.shape[-1]).astype(jnp.float32)


# ----------------------------------------------------------------------------- views


def current_view(params: Any, scales: Any, log_var: Any, masks: Any) -> Any:
    """The effective weights a task acts with: gated kernels ``w * (mu + sigma) * hard mask``,
    ungated scaled leaves ``w * scale``, the rest ``w``; all masked."""
    def leaf(p, s, v):
        if s is None:
            return p
        if v is None:
            return p * s
        return jnp.where(kept(s, v), p * (s + jnp.exp(0.5 * v)), jnp.zeros((), p.dtype))
    return apply_masks(jax.tree.map(leaf, params, scales, log_var, is_leaf=is_none), masks)


def acting_weights(net_state: NetState) -> Any:
    """``current_view`` of a network state: what the task being trained acts with."""
    return current_view(net_state.params, net_state.scales,
                        net_state.method_state["log_var"], net_state.masks)


def task_views(net_state: NetState, num_tasks: int) -> Any:
    """Every task's effective weights, stacked over a leading task axis: an ended task's
    snapshot; the current view for the task being trained and the later ones."""
    ms = net_state.method_state
    now = acting_weights(net_state)
    ended = jnp.arange(num_tasks) < ms["phase"]
    return jax.tree.map(lambda snap, w: jnp.where(
        ended.reshape(-1, *([1] * w.ndim)), snap[:num_tasks], w[None]), ms["views"], now)


# ----------------------------------------------------------------------------- the method


def layer_name(path: tuple) -> str:
    """A gated kernel's layer, e.g. ``trunk/conv_0`` for ``params/trunk/conv_0/kernel``."""
    name = path_str(path)
    return name.removeprefix("params/").removesuffix("/kernel")


def ibm(settings: NetworkMethodSettings, options: IBMOptions) -> Method:
    """The gate training, SVD ratios, consolidation and snapshots of the module docstring."""
    gate_tx = optax.adam(options.gate_learning_rate)
    num_tasks = max(settings.phases, 1)

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, dict]:
        del key
        gated = jax.tree_util.tree_map_with_path(
            lambda path, f: bool(f) and leaf_slices(path, settings.task_leaves) is None,
            maskable)
        mu = jax.tree.map(lambda x, g: jnp.full(x.shape, options.init_mu, jnp.float32)
                          if g else None, params, gated)
        log_var = jax.tree.map(lambda m: None if m is None else jnp.full(
            m.shape, options.init_log_var, jnp.float32), mu, is_leaf=is_none)
        return no_masks(params), {
            "log_var": log_var,
            "gate_opt": gate_tx.init({"mu": mu, "log_var": log_var}),
            "consolidated": jax.tree.map(lambda x: jnp.zeros(x.shape, bool), params),
            "views": jax.tree.map(lambda x: jnp.zeros((num_tasks, *x.shape), x.dtype), params),
            "svd_ratio": jax.tree.map(lambda m: None if m is None else jnp.ones((), jnp.float32),
                                      mu, is_leaf=is_none),
            "svd_phase": jnp.full((), -1, jnp.int32),
            "phase": jnp.zeros((), jnp.int32),
            "consolidations": jnp.zeros((), jnp.int32),
            **statistics_of(params, mu, log_var, no_masks(params),
                            jax.tree.map(lambda x: jnp.zeros(x.shape, bool), params),
                            jnp.zeros((), jnp.int32)),
        }

    def statistics_of(params, mu, log_var, masks, consolidated, phase) -> dict:
        """Kept and frozen shares of the trunk kernels, per network and per gated layer, and
        the kept share of what the task can use (trunk kernels plus its own head)."""
        tasks = task_index(params, settings.task_leaves)
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        masks_, mus, log_vars, frozen, owners = (
            jax.tree.leaves(t, is_leaf=is_none) for t in (masks, mu, log_var, consolidated,
                                                          tasks))
        layers, trunk, trunk_kept, trunk_frozen, own = {}, 0, 0, 0, 0
        for (path, p), m, u, v, fz, owner in zip(flat, masks_, mus, log_vars, frozen, owners,
                                                 strict=True):
            active = jnp.ones(p.shape, bool) if m is None else m
            if v is not None:
                count = jnp.maximum(jnp.sum(active), 1)
                keep = jnp.sum(active & kept(u, v))
                freeze = jnp.sum(active & fz)
                layers[layer_name(path)] = {"kept": (keep / count).astype(jnp.float32),
                                            "frozen": (freeze / count).astype(jnp.float32)}
                trunk, trunk_kept = trunk + jnp.sum(active), trunk_kept + keep
                trunk_frozen = trunk_frozen + freeze
            elif path_str(path).endswith("kernel"):  # the task's own kernels count, shared 0
                own = own + jnp.sum(active & (owner == phase))
        ratio = lambda a, b: (a / jnp.maximum(b, 1)).astype(jnp.float32)  # noqa: E731
        return {"kept_fraction": ratio(trunk_kept + own, trunk + own),
                "trunk_kept_fraction": ratio(trunk_kept, trunk),
                "frozen_fraction": ratio(trunk_frozen, trunk), "layers": layers}

    def statistics(state: NetState) -> dict:
        ms = state.method_state
        return statistics_of(state.params, gated_scales(state),
                             ms["log_var"], state.masks, ms["consolidated"], ms["phase"])

    def gated_scales(state: NetState) -> Any:
        """The gate means (the scales at gated leaves, None elsewhere)."""
        return jax.tree.map(lambda s, v: None if v is None else s, state.scales,
                            state.method_state["log_var"], is_leaf=is_none)

    def draw_noise(state: NetState, log_var: Any, key: jax.Array) -> Any:
        """The next training pass's ``eps * sigma`` at gated active entries, 0 elsewhere (the
        ungated heads' scales stay exact)."""
        leaves, treedef = jax.tree.flatten(state.scales)
        index = jax.tree.unflatten(treedef, list(range(len(leaves))))  # each leaf's draw key

        def noise(s, i, v, m):
            if s is None:
                return None
            if v is None:  # an ungated head: no draw
                return jnp.zeros_like(s)
            e = jax.random.normal(jax.random.fold_in(key, i), s.shape, s.dtype)
            active = jnp.ones(s.shape, bool) if m is None else m
            return jnp.where(active, e * jnp.exp(0.5 * v), 0.0).astype(s.dtype)
        return jax.tree.map(noise, state.scales, index, log_var, state.masks, is_leaf=is_none)

    def train_gates(state: NetState, key: jax.Array, context: MethodContext) -> NetState:
        """One Adam step of every gate (frozen weights' too) on the step's gradient plus the
        penalty's, and the next pass's noise."""
        ms = state.method_state
        batch = jax.tree.leaves(context.batch)[0].shape[0] if context.batch is not None else 1
        coefficient = options.kl_weight / batch

        def gradients(g, noise, mu, log_var, ratio, m):
            if log_var is None:
                return None, None
            kl_mu, kl_log_var = kl_gradients(mu, log_var)
            active = jnp.ones(mu.shape, bool) if m is None else m
            zero = jnp.zeros((), mu.dtype)
            weight = coefficient * ratio
            return (jnp.where(active, g + weight * kl_mu, zero),
                    jnp.where(active, g * noise / 2 + weight * kl_log_var, zero))

        pairs = jax.tree.map(gradients, context.scale_grads, state.scale_noise,
                             gated_scales(state), ms["log_var"], ms["svd_ratio"], state.masks,
                             is_leaf=is_none)
        is_pair = lambda x: isinstance(x, tuple) and len(x) == 2  # noqa: E731
        grads = {"mu": jax.tree.map(lambda p: p[0], pairs, is_leaf=is_pair),
                 "log_var": jax.tree.map(lambda p: p[1], pairs, is_leaf=is_pair)}
        gates = {"mu": gated_scales(state), "log_var": ms["log_var"]}
        updates, gate_opt = gate_tx.update(grads, ms["gate_opt"], gates)
        stepped = optax.apply_updates(gates, updates)
        scales = jax.tree.map(lambda s, mu: s if mu is None else mu, state.scales,
                              stepped["mu"], is_leaf=is_none)
        state = state.replace(scales=unit_scales_where_masked(scales, state.masks))
        return state.replace(scale_noise=draw_noise(state, stepped["log_var"], key),
                             method_state={**ms, "log_var": stepped["log_var"],
                                           "gate_opt": gate_opt})

    def restore_frozen(state: NetState, context: MethodContext, consolidated: Any) -> Any:
        """The params with the ``consolidated`` entries back at their values before the step."""
        return apply_masks(jax.tree.map(lambda c, before, p: jnp.where(c, before, p),
                                        consolidated, context.params_before, state.params),
                           state.masks)

    def consolidate(state: NetState, key: jax.Array, context: MethodContext) -> NetState:
        """End the task ``method_state["phase"]``: its mask joins the frozen set, its snapshot is
        kept, the free gates are re-initialised and both Adams start anew."""
        ms = state.method_state
        ended = ms["phase"]
        tasks = task_index(state.params, settings.task_leaves)
        mu = gated_scales(state)

        def joined(c, v, u, owner, m):
            if v is None:  # a task's own entries freeze with it; shared ungated ones never
                return c | (owner == ended)
            active = jnp.ones(c.shape, bool) if m is None else m
            return c | (active & kept(u, v))

        consolidated = jax.tree.map(joined, ms["consolidated"], ms["log_var"], mu, tasks,
                                    state.masks, is_leaf=is_none)
        params = restore_frozen(state, context, consolidated)
        # The ended task's view, from its weights before this (the next task's first) update.
        snapshot = current_view(context.params_before, state.scales, ms["log_var"],
                                state.masks)
        views = jax.tree.map(lambda v, w: v.at[ended].set(w), ms["views"], snapshot)
        mu = jax.tree.map(lambda u, c: None if u is None else jnp.where(
            c, u, options.init_mu).astype(u.dtype), mu, consolidated, is_leaf=is_none)
        log_var = jax.tree.map(lambda v, c: None if v is None else jnp.where(
            c, v, options.init_log_var).astype(v.dtype), ms["log_var"], consolidated,
            is_leaf=is_none)
        scales = jax.tree.map(lambda s, u: s if u is None else u, state.scales, mu,
                              is_leaf=is_none)
        state = state.replace(params=params, opt_state=fresh_adam(state.opt_state),
                              scales=unit_scales_where_masked(scales, state.masks))
        return state.replace(scale_noise=draw_noise(state, log_var, key), method_state={
            **ms, "log_var": log_var, "gate_opt": gate_tx.init({"mu": mu, "log_var": log_var}),
            "consolidated": consolidated, "views": views,
            "consolidations": ms["consolidations"] + 1})

    def svd_ratios(state: NetState, context: MethodContext) -> Any:
        """Each gated kernel's penalty factor from its layer's sown outputs on this batch (1
        for a kernel without one)."""
        outputs = context.activations(acting_weights(state))
        by_kernel = {(*layer.incoming, "kernel"): layer.activation
                     for layer in context.neuron_layers}

        def ratio(path: tuple, r: Any) -> Any:
            if r is None:
                return None
            names = tuple(path_str(path).split("/"))
            if names not in by_kernel:
                return r
            return svd_ratio(get_path(outputs, by_kernel[names]), options.svd_variance)
        return jax.tree_util.tree_map_with_path(ratio, state.method_state["svd_ratio"],
                                                is_leaf=is_none)

    def with_svd_ratios(state: NetState, phase: jax.Array, context: MethodContext) -> NetState:
        """The SVD ratios, recomputed at the first update of each phase."""
        ms = state.method_state
        if options.svd_variance == 0 or context.activations is None:
            return state
        ratios = jax.lax.cond(ms["svd_phase"] != phase, lambda: svd_ratios(state, context),
                              lambda: ms["svd_ratio"])
        return state.replace(method_state={**ms, "svd_ratio": ratios, "svd_phase": phase})

    def transform(net_state: NetState, step: jax.Array, key: jax.Array,
                  context: MethodContext) -> NetState:
        del step
        if net_state.scale_noise is None:
            raise ValueError("ibm needs a network built with its gates (build_network)")
        phase = jnp.asarray(0 if context.phase is None else context.phase, jnp.int32)
        if settings.phases == 1:  # a multi-task run: no boundary, nothing frozen
            state = train_gates(with_svd_ratios(net_state, phase, context), key, context)
        else:
            boundary = phase != net_state.method_state["phase"]
            state = jax.lax.cond(
                boundary, lambda s: consolidate(s, key, context),
                lambda s: train_gates(s.replace(params=restore_frozen(
                    s, context, s.method_state["consolidated"])), key, context), net_state)
            state = with_svd_ratios(state.replace(method_state={**state.method_state,
                                                                "phase": phase}),
                                    phase, context)
        return state.replace(method_state={**state.method_state, **statistics(state)})

    return Method(init=init, transform=transform)


ENTRY = MethodEntry(
    name="ibm",
    kind="plasticity",
    description="IBM: trunk weights gated by learned Gaussian gates under an information-"
                "bottleneck penalty; at task boundaries each task's mask joins the frozen set, "
                "gates stay trainable, and each task acts with its own snapshot",
    source="Chen et al., IBM, arXiv 2312.00840 (authors' code zackschen/IBM-Net; gates and "
           "bound: Dai et al. 2018, VIBNet)",
    build=ibm,
    options=IBMOptions,
    check=check_ibm_options,
    check_run=check_ibm_run,
    reparameterize=lambda options: lambda weights, maskable: gate_scales(
        weights, maskable, options.init_mu),
    noisy_scales=True,
    task_weights=lambda options: task_views,
    experimental="the KL weight and gate learning rate are the authors' (1e-3, 1e-3), not yet "
                 "chosen by a sweep on RL tasks; not yet in the 5-seed minigrid-seq table",
)
