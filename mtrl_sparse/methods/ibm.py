"""``ibm``: Information-Bottleneck Masked sub-networks (IBM, arXiv 2312.00840), per-task
sub-networks isolated by learned stochastic gates.

Every maskable weight ``w`` has a gate with mean ``mu`` and log-variance ``log_var``; a gradient
step's forward pass computes with ``w * (mu + eps * sigma)``, ``eps ~ N(0, 1)`` drawn per weight
and step, and evaluation and acting with the deterministic ``w * mu``. The gates are the
network's scales (``agents.net_state``: ``scales`` = ``mu``, ``scale_noise`` = ``eps * sigma``),
trained by this method with its own Adam from the gradient the step hands it
(``MethodContext.scale_grads``, the gradient w.r.t. ``mu + eps * sigma``; the reparameterisation
trick gives ``mu``'s and, times ``eps * sigma / 2``, ``log_var``'s) plus that of the
information-bottleneck penalty (the variational bound of Dai et al. 2018, VIBNet):

    kl_weight / B * sum over layers of 0.5 * sum log(1 + mu^2 / (sigma^2 + 1e-8)),

with ``B`` the step's batch size (the penalty is one term per data set, the RL loss a mean over
the batch). The penalty drives redundant gates to zero; a weight belongs to the task's
sub-network when ``mu^2 > sigma^2``.

At a task boundary of a sequential schedule the sub-network of the task that ended is
consolidated: its weights are frozen (gate folded into the weight, never updated again), as are,
once, the parameters every task shares that are not masked (biases and norms of the trunk, as in
PackNet), and the task's own slice of the per-task heads' biases; the free weights' gates and
optimizer moments are re-initialised for the next task. A task ``t`` then acts with its own view
of the network (``task_views``): the weights frozen for tasks ``0..t``, plus the free weights for
the task being trained, so that training later tasks never changes an earlier task's outputs.
Frozen weights are restored after every optimizer step; the boundary's first update (taken before
the method sees the new phase) is undone on them from ``MethodContext.params_before``.

In a multi-task run (one phase) IBM trains the gated network with its penalty and reports the
kept fraction; nothing is frozen.
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
    masked_params,
    unit_scales_where_masked,
    zero_moments_at,
)
from mtrl_sparse.agents.tree_paths import path_str
from mtrl_sparse.agents.trees import is_none
from mtrl_sparse.methods.base import Method, MethodEntry, NetworkMethodSettings
from mtrl_sparse.methods.topology import LayerSlices, join_layers, named_leaf_slices, no_masks

KL_EPSILON = 1e-8
FREE = -1
"""``owner`` of a parameter entry that no task has frozen."""


@dataclass(frozen=True)
class IBMOptions:
    """IBM's gates on the networks that run ``ibm``."""

    kl_weight: float = 1e-5
    """lambda, the weight of the information-bottleneck penalty (divided by the batch size).
    1e-3 closed 99% of the gates of the MiniGrid PPO actor within 280 updates of
    the first task (Adam steps every gate whose RL gradient is below the penalty's at the full
    learning rate); 1e-5 keeps about 15% and 1e-7 nearly all (minigrid-seq, one seed)."""
    gate_learning_rate: float = 1e-2
    """Adam's learning rate for the gates' means and log-variances."""
    init_mu: float = 1.0
    """Initial gate mean (and after every consolidation, of the free weights)."""
    init_log_var: float = -9.0
    """Initial gate log-variance (VIBNet's initialisation)."""


def check_ibm_options(options: IBMOptions) -> None:
    """ValueError (one line) for a negative penalty, a non-positive learning rate or a zero
    initial mean (a zero gate passes no gradient to its weight)."""
    if options.kl_weight < 0 or options.gate_learning_rate <= 0 or options.init_mu == 0:
        raise ValueError("ibm needs kl_weight >= 0, gate_learning_rate > 0 and init_mu != 0; got "
                         f"{options.kl_weight}, {options.gate_learning_rate}, {options.init_mu}")


def check_ibm_run(settings: NetworkMethodSettings, options: IBMOptions, network: str) -> None:
    """IBM's gates are the network's scales, and it freezes parameters itself: no Sign-In (its
    scales) and no sparse tuning (its own freezing) beside it."""
    clash = {"sign_in", "sparse_tune"} & set(settings.name.split("+"))
    if clash:
        raise ValueError(f"ibm on the {network} cannot be combined with {', '.join(sorted(clash))}"
                         " (ibm trains the scales and freezes parameters itself)")


def gate_scales(weights: Any, maskable: Any, init_mu: float) -> tuple[Any, Any]:
    """``(params, scales)`` at initialisation: the weights unchanged, every maskable leaf's gate
    mean ``init_mu`` (None elsewhere)."""
    scales = jax.tree.map(lambda x, f: jnp.full(x.shape, init_mu, x.dtype) if f else None,
                          weights, maskable)
    params = jax.tree.map(lambda s, x: x if s is None else x / init_mu, scales, weights,
                          is_leaf=is_none)
    return params, scales


def kl_penalty(mu: jax.Array, log_var: jax.Array) -> jax.Array:
    """0.5 * sum log(1 + mu^2 / (sigma^2 + 1e-8)) of one leaf's gates, ()."""
    return 0.5 * jnp.sum(jnp.log1p(jnp.square(mu) / (jnp.exp(log_var) + KL_EPSILON)))


def kl_gradients(mu: jax.Array, log_var: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The gradients of ``kl_penalty`` w.r.t. ``mu`` and ``log_var``, elementwise."""
    var = jnp.exp(log_var) + KL_EPSILON
    total = var + jnp.square(mu)
    return mu / total, -0.5 * jnp.square(mu) * (var - KL_EPSILON) / (var * total)


def kept(mu: jax.Array, log_var: jax.Array) -> jax.Array:
    """The sub-network of the gates: ``mu^2 > sigma^2``, bool."""
    return jnp.square(mu) > jnp.exp(log_var)


def task_index(params: Any, layer_slices: LayerSlices) -> Any:
    """Per parameter entry, the task whose layer it belongs to: the slice's task for leaves
    stacking per-task layers (kernels named in ``layer_slices``, and their biases), ``FREE``
    (every task's) elsewhere; int32 trees of the params' shapes."""
    def index(path: tuple, leaf: jax.Array) -> jax.Array:
        name = path_str(path)
        slices = named_leaf_slices(name, layer_slices)
        if slices is None and name.endswith("/bias"):
            kernel_slices = named_leaf_slices(name[: -len("bias")] + "kernel", layer_slices)
            if kernel_slices is not None:  # a bias along the kernel's output axis
                slices = (0 if kernel_slices[0] == 0 else -1, kernel_slices[1])
        if slices is None:
            return jnp.full(leaf.shape, FREE, jnp.int32)
        axis, count = slices
        moved = jnp.moveaxis(jnp.zeros(leaf.shape, jnp.int32), axis, 0)
        rows = jnp.arange(count, dtype=jnp.int32).reshape(count, *([1] * moved.ndim))
        layers = jnp.broadcast_to(rows, (count, moved.shape[0] // count, *moved.shape[1:]))
        return join_layers(layers, axis, leaf.shape)
    return jax.tree_util.tree_map_with_path(index, params)


def task_views(net_state: NetState, num_tasks: int) -> Any:
    """The effective weights of every task's sub-network, stacked over a leading task axis:
    task ``t`` reads the weights frozen for tasks ``0..t``, and the free weights too when ``t``
    is the task being trained or a later one; leaves without gates as ``masked_params``."""
    ms = net_state.method_state
    weights = masked_params(net_state)

    def view(t: jax.Array) -> Any:
        def leaf(w: jax.Array, owner: jax.Array, scale: Any) -> jax.Array:
            if scale is None:
                return w
            active = jnp.where(owner == FREE, t >= ms["phase"], owner <= t)
            return jnp.where(active, w, jnp.zeros((), w.dtype))
        return jax.tree.map(leaf, weights, ms["owner"], net_state.scales, is_leaf=is_none)

    return jax.vmap(view)(jnp.arange(num_tasks, dtype=jnp.int32))


def ibm(settings: NetworkMethodSettings, options: IBMOptions) -> Method:
    """The gate training and the consolidation of the module docstring; state: ``log_var``,
    ``gate_opt`` (Adam's state of ``{"mu", "log_var"}``), ``owner`` (per parameter entry the
    task that froze it, or ``FREE``), ``frozen`` (the frozen entries' values), ``phase``,
    ``kept_fraction`` (gated weights with mu^2 > sigma^2 or frozen, over the active maskable
    weights), ``frozen_fraction`` and ``consolidations``."""
    gate_tx = optax.adam(options.gate_learning_rate)

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, dict]:
        del key
        mu = jax.tree.map(lambda x, f: jnp.full(x.shape, options.init_mu, jnp.float32)
                          if f else None, params, maskable)
        log_var = jax.tree.map(lambda m: None if m is None else jnp.full(
            m.shape, options.init_log_var, jnp.float32), mu, is_leaf=is_none)
        return no_masks(params), {
            "log_var": log_var,
            "gate_opt": gate_tx.init({"mu": mu, "log_var": log_var}),
            "owner": jax.tree.map(lambda x: jnp.full(x.shape, FREE, jnp.int32), params),
            "frozen": jax.tree.map(jnp.zeros_like, params),
            "phase": jnp.zeros((), jnp.int32),
            "kept_fraction": jnp.ones((), jnp.float32),
            "frozen_fraction": jnp.zeros((), jnp.float32),
            "consolidations": jnp.zeros((), jnp.int32),
        }

    def active_where(masks: Any, scales: Any) -> Any:
        """Per gated leaf, the entries the network's mask keeps (all without a mask)."""
        return jax.tree.map(lambda s, m: None if s is None else (
            jnp.ones(s.shape, bool) if m is None else m), scales, masks, is_leaf=is_none)

    def statistics(state: NetState) -> dict:
        ms = state.method_state
        gated_owner = jax.tree.map(lambda g, o: None if g is None else o, state.scales,
                                   ms["owner"], is_leaf=is_none)
        rows = list(zip(jax.tree.leaves(active_where(state.masks, state.scales)),
                        jax.tree.leaves(gated_owner), jax.tree.leaves(state.scales),
                        jax.tree.leaves(ms["log_var"]), strict=True))
        if not rows:
            return {"kept_fraction": jnp.ones((), jnp.float32),
                    "frozen_fraction": jnp.zeros((), jnp.float32)}
        total = jnp.maximum(sum(jnp.sum(a) for a, *_ in rows), 1)
        frozen = sum(jnp.sum(a & (o != FREE)) for a, o, *_ in rows)
        keep = sum(jnp.sum(a & ((o != FREE) | kept(m, v))) for a, o, m, v in rows)
        return {"kept_fraction": (keep / total).astype(jnp.float32),
                "frozen_fraction": (frozen / total).astype(jnp.float32)}

    def train_gates(state: NetState, key: jax.Array, context: MethodContext) -> NetState:
        """One Adam step of the free gates on the step's gradient plus the penalty's, and the
        next step's noise."""
        ms = state.method_state
        batch = jax.tree.leaves(context.batch)[0].shape[0] if context.batch is not None else 1
        coefficient = options.kl_weight / batch
        free = jax.tree.map(lambda s, o, a: None if s is None else (o == FREE) & a,
                            state.scales, ms["owner"], active_where(state.masks, state.scales),
                            is_leaf=is_none)

        def gradients(g, noise, mu, log_var, f):
            if f is None:
                return None, None
            kl_mu, kl_log_var = kl_gradients(mu, log_var)
            zero = jnp.zeros((), mu.dtype)
            return (jnp.where(f, g + coefficient * kl_mu, zero),
                    jnp.where(f, g * noise / 2 + coefficient * kl_log_var, zero))

        pairs = jax.tree.map(gradients, context.scale_grads, state.scale_noise, state.scales,
                             ms["log_var"], free, is_leaf=is_none)
        is_pair = lambda x: isinstance(x, tuple) and len(x) == 2  # noqa: E731
        grads = {"mu": jax.tree.map(lambda p: p[0], pairs, is_leaf=is_pair),
                 "log_var": jax.tree.map(lambda p: p[1], pairs, is_leaf=is_pair)}
        gates = {"mu": state.scales, "log_var": ms["log_var"]}
        updates, gate_opt = gate_tx.update(grads, ms["gate_opt"], gates)
        stepped = optax.apply_updates(gates, updates)
        mu, log_var = (jax.tree.map(lambda f, new, old: None if f is None else jnp.where(
            f, new, old), free, stepped[k], gates[k], is_leaf=is_none) for k in ("mu", "log_var"))
        leaves, treedef = jax.tree.flatten(mu)
        draws = jax.tree.unflatten(treedef, [
            jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            for i, x in enumerate(leaves)])
        noise = jax.tree.map(lambda f, e, v: None if f is None else jnp.where(
            f, e * jnp.exp(0.5 * v), 0.0), free, draws, log_var, is_leaf=is_none)
        return state.replace(scales=unit_scales_where_masked(mu, state.masks), scale_noise=noise,
                             method_state={
            **ms, "log_var": log_var, "gate_opt": gate_opt})

    def consolidate(state: NetState, context: MethodContext) -> NetState:
        """Freeze the sub-network of the task that ended (``method_state["phase"]``), and
        re-initialise the free gates and moments."""
        ms = state.method_state
        ended = ms["phase"]
        tasks = task_index(state.params, settings.layer_slices)
        active = active_where(state.masks, state.scales)

        def owner_of(owner, task, scale, log_var, a):
            eligible = (owner == FREE) & ((task == FREE) | (task == ended))
            if scale is None:  # biases, norms: shared ones once, per-task ones their slice
                return jnp.where(eligible, ended, owner)
            return jnp.where(eligible & a & kept(scale, log_var), ended, owner)

        owner = jax.tree.map(owner_of, ms["owner"], tasks, state.scales, ms["log_var"], active,
                             is_leaf=is_none)
        newly = jax.tree.map(lambda new, old: (new != FREE) & (old == FREE), owner, ms["owner"])
        # Undo the new task's first update on what freezes now; fold the gate into the weight.
        params = jax.tree.map(lambda n, before, now, old, frozen: jnp.where(
            n, before, jnp.where(old != FREE, frozen, now)), newly, context.params_before,
            state.params, ms["owner"], ms["frozen"])
        params = jax.tree.map(lambda s, p, n: p if s is None else jnp.where(n, p * s, p),
                              state.scales, params, newly, is_leaf=is_none)
        free = jax.tree.map(lambda s, o: None if s is None else o == FREE, state.scales, owner,
                            is_leaf=is_none)
        mu = jax.tree.map(lambda s, f: None if s is None else jnp.where(
            f, options.init_mu, 1.0).astype(s.dtype), state.scales, free, is_leaf=is_none)
        log_var = jax.tree.map(lambda v: None if v is None else jnp.full_like(
            v, options.init_log_var), ms["log_var"], is_leaf=is_none)
        gate_opt = gate_tx.init({"mu": mu, "log_var": log_var})
        free_weights = jax.tree.map(lambda s, f: None if s is None else f, state.scales, free,
                                    is_leaf=is_none)
        state = state.replace(
            params=params,
            opt_state=zero_moments_at(state.opt_state, free_weights, context.optimizer),
            scales=unit_scales_where_masked(mu, state.masks),
            scale_noise=jax.tree.map(lambda m: None if m is None else jnp.zeros_like(m), mu,
                                     is_leaf=is_none))
        return state.replace(method_state={
            **ms, "log_var": log_var, "gate_opt": gate_opt, "owner": owner,
            "frozen": params, "consolidations": ms["consolidations"] + 1})

    def restore_frozen(state: NetState) -> NetState:
        """The frozen entries back at their values (a mask method beside IBM may still prune
        them)."""
        ms = state.method_state
        return state.replace(params=apply_masks(jax.tree.map(
            lambda p, o, f: jnp.where(o != FREE, f, p), state.params, ms["owner"], ms["frozen"]),
            state.masks))

    def transform(net_state: NetState, step: jax.Array, key: jax.Array,
                  context: MethodContext) -> NetState:
        del step
        if net_state.scale_noise is None:
            raise ValueError("ibm needs a network built with its gates (build_network)")
        if settings.phases == 1:  # a multi-task run: no boundary, nothing frozen to restore
            state = train_gates(net_state, key, context)
            return state.replace(method_state={**state.method_state, **statistics(state)})
        phase = jnp.asarray(0 if context.phase is None else context.phase, jnp.int32)
        boundary = phase != net_state.method_state["phase"]
        state = jax.lax.cond(boundary, lambda s: consolidate(s, context),
                             lambda s: train_gates(restore_frozen(s), key, context), net_state)
        state = state.replace(method_state={**state.method_state, "phase": phase})
        return state.replace(method_state={**state.method_state, **statistics(state)})

    return Method(init=init, transform=transform)


ENTRY = MethodEntry(
    name="ibm",
    kind="plasticity",
    description="IBM: weights gated by learned Gaussian gates under an information-bottleneck "
                "penalty; at task boundaries each task's sub-network (mu^2 > sigma^2) is frozen "
                "and the task acts with its own view",
    source="IBM, arXiv 2312.00840 (gates and bound: Dai et al. 2018, VIBNet)",
    build=ibm,
    options=IBMOptions,
    check=check_ibm_options,
    check_run=check_ibm_run,
    reparameterize=lambda options: lambda weights, maskable: gate_scales(
        weights, maskable, options.init_mu),
    noisy_scales=True,
    task_weights=lambda options: task_views,
    experimental="at the default KL weight the first task freezes almost the whole trunk, so "
                 "later tasks train their heads only (the authors keep gates trainable after "
                 "freezing, with a snapshot of each task's gates); kept_fraction counts the "
                 "other tasks' heads; KL weight and gate learning rate not yet chosen by a sweep",
)
