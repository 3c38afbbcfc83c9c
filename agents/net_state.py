"""A network's train state: parameters, masks and optimizer state, and the one masking helper.

``masks`` has the tree structure of ``params``. A leaf that is masked holds a boolean array of the
leaf's shape (True = the weight is active); a leaf that is never masked (biases, norms, a task
encoder, every leaf of a dense network) holds ``None``. The forward pass always reads
``masked_params(state)``; after every optimizer step ``apply_gradients`` multiplies the parameters
by the masks again so that nothing (Adam moments, weight decay) can revive a pruned weight.

Invariant (asserted by the tests after every kind of update):
``params == params * masks`` and every optimizer moment is zero wherever ``masks`` is False.

A method may reparameterise the maskable weights as ``theta = scale * w`` (Sign-In): the state
then holds the per-weight ``scales`` (None elsewhere) with their own optimizer state, both trained
by the network's optimizer; the forward pass reads ``masks * scales * params`` (still through
``masked_params``), and a masked weight has scale 1 (a weight that regrows starts at
``(scale, w) = (1, 0)``).

A method may also train the scales itself as stochastic gates (IBM): the network's optimizer then
leaves them alone (``scale_opt_state`` None), and ``scale_noise`` holds additive noise on the scales
that the training forward pass of the next gradient step reads (``training_weights``: ``masks *
(scales + scale_noise) * params``); evaluation, acting and target networks read the noiseless
``masked_params``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mtrl_sparse.agents.networks import TASK_ENCODER, NeuronLayer
from mtrl_sparse.agents.sparse_linear import index_masks, refresh_index, with_index
from mtrl_sparse.agents.trees import is_none

Params = Any  # a pytree of arrays
Masks = Any  # the tree of ``params`` with bool arrays or None leaves


class NetState(struct.PyTreeNode):
    """Train state of one network.

    Attributes:
        params: the network's parameters.
        masks: bool arrays congruent with ``params``; None for unmasked leaves.
        opt_state: the optax state of this network's optimizer.
        method_state: whatever the network's mask method keeps between calls (array data only,
            e.g. its target sparsity, so that runs differing in it can be vmapped).
        scales: None, or for a reparameterised network the tree of ``params`` with a float array
            per maskable leaf (None elsewhere): the effective weight is ``scales * params``.
        scale_opt_state: the optax state of ``scales`` (same optimizer; None without scales, and
            None for scales that the method trains itself).
        scale_noise: None, or the tree of ``scales`` with the additive noise the next gradient
            step's forward pass puts on them (``training_weights``; drawn by the method).
        sparse_index: None (dense compute), or the tree of ``masks`` with the compressed index
            of each masked kernel (``agents.sparse_linear``), rebuilt wherever the masks change,
            through which the forward and backward passes compute with the active weights only
            (``forward_weights``).
    """

    params: Params
    masks: Masks
    opt_state: optax.OptState
    method_state: Any = None
    scales: Any = None
    scale_opt_state: optax.OptState = None
    scale_noise: Any = None
    sparse_index: Any = None


class MethodContext(NamedTuple):
    """What a method receives from the agent at an update, besides the network state.

    Built by the agents (each network fills the network fields; ``masked_gradient_step`` fills
    the gradient fields after its optimizer step) and read by the methods; frozen, so a method
    cannot change what the next member of a composition sees.

    Attributes:
        optimizer: the network's optax transformation (methods zero its moments where they
            prune, regrow or re-initialise).
        grads: gradient of the loss w.r.t. the params, zero where masked (the step's gradient).
        dense_grads: gradient w.r.t. the effective weights ``params * masks``, defined at masked
            weights too (what RigL grows by).
        init_params: ``init_params(key)`` -> a fresh variable tree ``{"params": ...}`` of the
            network (what Reset and ReDo re-initialise from).
        activations: ``activations(weights)`` -> the network's sown hidden activations on this
            update's batch given effective weights, keyed like ``neuron_layers``' ``activation``
            paths (what ReDo scores neurons by).
        neuron_layers: the network's hidden layers (incoming / outgoing modules, activation path).
        batch: the data of this update. SAC: ``(transition, task_ids)``, the replay ``Transition``
            of the update (B rows) and its (B,) task ids; PPO: the minibatch dict of the step
            (``obs``, ``task_ids``, ``actions``, ``log_probs``, ``advantages``, ``returns``).
        phase: () int32, the phase of the run's schedule this update belongs to: 0 throughout
            a multi-task run; in a sequential schedule the index of the task being trained (a
            method sees a task boundary as a change of it).
        scale_grads: for a network with scales, the gradient of the loss w.r.t. the scales
            used by the step's forward pass (``scales + scale_noise``), zero where masked.
        params_before: the params before this step's optimizer update.
    """

    optimizer: optax.GradientTransformation | None = None
    grads: Params = None
    dense_grads: Params = None
    init_params: Callable[[jax.Array], Any] | None = None
    activations: Callable[[Params], Any] | None = None
    neuron_layers: tuple[NeuronLayer, ...] = ()
    batch: Any = None
    phase: jax.Array | None = None
    scale_grads: Params = None
    params_before: Params = None


class MaskMethod(Protocol):
    """What an agent needs from a sparsity or plasticity method (built in ``mtrl_sparse.methods``).

    ``init(params, maskable, key) -> (masks, method_state)``: ``maskable`` is the tree of ``params``
    with a Python bool per leaf saying whether that leaf may be masked.
    ``transform(net_state, step, key, context) -> net_state``: called after every gradient step of
    the network with that network's update count ``step``; pure and jit-compatible. ``context`` is
    the ``MethodContext`` of the step (gradients, activations, a fresh initialisation...).
    A method that reads ``context.dense_grads`` also has ``dense_grads_due(net_state, step,
    context) -> bool array``: under sparse compute the gradient is dense only at those updates
    (elsewhere it is zero at inactive weights); methods without the attribute never read it.
    """

    init: Callable[[Params, Any, jax.Array], tuple[Masks, Any]]
    transform: Callable[[NetState, jax.Array, jax.Array, MethodContext], NetState]


def apply_masks(params: Params, masks: Masks) -> Params:
    """``params * masks`` leaf by leaf; leaves whose mask is None pass through unchanged."""
    return jax.tree.map(
        lambda p, m: p if m is None else jnp.where(m, p, jnp.zeros((), p.dtype)), params, masks
    )


def scaled_params(params: Params, scales: Any) -> Params:
    """``scales * params`` leaf by leaf (leaves without a scale, or ``scales`` None: params)."""
    if scales is None:
        return params
    return jax.tree.map(lambda s, p: p if s is None else s * p, scales, params, is_leaf=is_none)


def effective_weights(state: NetState) -> Params:
    """The weights the network computes with, before masking: ``params``, or ``scales * params``
    for a reparameterised network (what magnitude pruning ranks)."""
    return scaled_params(state.params, state.scales)


def masked_params(state: NetState) -> Params:
    """The parameters the forward pass uses: the one place where masks (and scales) meet the
    network."""
    return apply_masks(effective_weights(state), state.masks)


def forward_weights(state: NetState) -> Params:
    """``masked_params`` as the variables a network applies: with the state's sparse index, if
    any, so that the masked kernels compute with their active weights only."""
    return with_index(masked_params(state), state.sparse_index)


def training_scales(state: NetState) -> Any:
    """The scales a gradient step's forward pass reads: ``scales + scale_noise`` (``scales``
    without noise)."""
    if state.scale_noise is None:
        return state.scales
    return jax.tree.map(lambda s, e: None if s is None else s + e, state.scales,
                        state.scale_noise, is_leaf=is_none)


def training_weights(state: NetState) -> Params:
    """``masked_params`` with the scales' noise: the weights of a gradient step's forward pass."""
    return apply_masks(scaled_params(state.params, training_scales(state)), state.masks)


def default_maskable(params: Params, exclude_modules: tuple[str, ...] = ()) -> Any:
    """Which leaves may be masked by default: every weight matrix and convolution kernel.

    Flax names those leaves ``kernel``; biases, normalisation scales, every leaf under a module
    named ``TASK_ENCODER`` (the MoE / MOORE task encoder, always) and any leaf under a module
    whose name is in ``exclude_modules`` are never masked.
    """
    excluded = {TASK_ENCODER, *exclude_modules}

    def leaf_is_maskable(path: tuple, leaf: jax.Array) -> bool:
        names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        if any(n in excluded for n in names):
            return False
        return names[-1] == "kernel" and leaf.ndim >= 2

    return jax.tree_util.tree_map_with_path(leaf_is_maskable, params)


Reparameterize = Callable[[Params, Any], tuple[Params, Any]]
"""``(weights, maskable) -> (params, scales)``: split the initial (masked) weights into params and
per-weight scales with ``scales * params == weights`` (scales None at leaves not maskable)."""


def create_net_state(
    params: Params,
    tx: optax.GradientTransformation,
    method: MaskMethod,
    key: jax.Array,
    maskable: Any | None = None,
    reparameterize: Reparameterize | None = None,
    noisy_scales: bool = False,
    compute_density: float | None = None,
    kernel_layers: Callable[[Params, Any], Any] | None = None,
) -> NetState:
    """Build a network's state: masks from ``method``, params masked, optimizer initialised;
    with ``reparameterize``, the masked weights split into params and scales (each with its
    optimizer state, or, with ``noisy_scales``, no optimizer state for the scales, which the
    method trains, and zero ``scale_noise``); with ``compute_density``, the sparse index of the
    masked kernels that ``kernel_layers(params, maskable)`` selects (all without it), each
    computing sparsely while its density is at most ``compute_density``."""
    if maskable is None:
        maskable = default_maskable(params)
    masks, method_state = method.init(params, maskable, key)
    params = apply_masks(params, masks)
    index = None if compute_density is None else index_masks(
        masks, compute_density, None if kernel_layers is None else kernel_layers(params, maskable))
    if reparameterize is None:
        return NetState(params=params, masks=masks, opt_state=tx.init(params),
                        method_state=method_state, sparse_index=index)
    params, scales = reparameterize(params, maskable)
    scales = unit_scales_where_masked(scales, masks)
    state = NetState(params=params, masks=masks, opt_state=tx.init(params),
                     method_state=method_state, scales=scales, sparse_index=index)
    if noisy_scales:
        return state.replace(scale_noise=jax.tree.map(jnp.zeros_like, scales))
    return state.replace(scale_opt_state=tx.init(scales))


def with_masks(state: NetState, masks: Masks) -> NetState:
    """``state`` with new ``masks`` (and its sparse index rebuilt from them): the one way masks
    change after ``create_net_state``."""
    return state.replace(masks=masks, sparse_index=refresh_index(state.sparse_index, masks))


def averaged_copy_index(index: Any, masks_before: Masks, masks_after: Masks,
                        averaged_params: Params) -> Any:
    """The sparse index of a Polyak-averaged copy of a masked network (SAC's target critics),
    after one averaging step ``copy <- tau * masked_params + (1 - tau) * copy``.

    The copy is zero wherever both it and the masked params were, so its support only grows by
    the masks: an index built from ``support(copy) | masks`` stays valid while the masks stay
    ``masks_before``'s. When they changed in this step (a method's event: ``masks_after``
    differs), the index is rebuilt from the averaged copy's support and the new masks, which
    lets it shrink again once a pruned weight of the copy has decayed to exactly zero. Products
    with the copy through this index equal its dense products (up to summation order). ``None``
    (dense compute) stays ``None``.
    """
    if index is None:
        return None
    changed = jnp.any(jnp.stack([jnp.any(a != b) for a, b in zip(
        jax.tree.leaves(masks_before), jax.tree.leaves(masks_after), strict=True)]))
    support = jax.tree.map(lambda m, p: None if m is None else m | (p != 0), masks_after,
                           averaged_params, is_leaf=is_none)
    return _refresh_index_if(changed, index, support)


@jax.custom_batching.custom_vmap
def _refresh_index_if(changed: jax.Array, index: Any, masks: Any) -> Any:
    """``refresh_index(index, masks)`` if ``changed``, else ``index`` (a conditional: the
    rebuild costs milliseconds and is rarely due)."""
    return jax.lax.cond(changed, lambda: refresh_index(index, masks), lambda: index)


@_refresh_index_if.def_vmap
def _refresh_index_if_vmapped(axis_size, in_batched, changed, index, masks):
    """Under ``vmap`` (runs of a group), rebuild every run's index when any run's masks changed:
    a per-run condition would become a select that rebuilds at every update. A rebuilt index of
    an unchanged run is as valid as its old one."""
    def batched(tree, flags):
        return jax.tree.map(lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *x.shape)),
                            tree, flags)
    changed_batched, index_batched, masks_batched = in_batched
    index, masks = batched(index, index_batched), batched(masks, masks_batched)
    any_changed = jnp.any(changed) if changed_batched else changed
    rebuilt = jax.lax.cond(any_changed, lambda: jax.vmap(refresh_index)(index, masks),
                           lambda: index)
    return rebuilt, jax.tree.map(lambda _: True, rebuilt)


def unit_scales_at(scales: Any, positions: Any) -> Any:
    """``scales`` with 1 where ``positions`` (bool arrays congruent with the params, None where
    untouched) is True."""
    return jax.tree.map(
        lambda s, where: s if s is None or where is None
        else jnp.where(where, jnp.ones((), s.dtype), s),
        scales, positions, is_leaf=is_none)


def unit_scales_where_masked(scales: Any, masks: Masks) -> Any:
    """``scales`` with 1 wherever the mask is False (a weight that regrows starts at scale 1)."""
    return unit_scales_at(scales, jax.tree.map(lambda m: None if m is None else ~m, masks,
                                               is_leaf=is_none))


def apply_gradients(
    state: NetState, grads: Params, tx: optax.GradientTransformation,
    scale_grads: Any = None,
) -> NetState:
    """One optimizer step followed by re-masking of the parameters.

    ``grads`` are gradients with respect to ``state.params`` of a loss computed on
    ``masked_params(state)``, so they are zero where masked and the optimizer moments stay zero
    there too. A reparameterised network also steps its scales with ``scale_grads`` (zero where
    masked), through its own optimizer state, and keeps scale 1 where masked; scales without an
    optimizer state are the method's to train.
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = apply_masks(optax.apply_updates(state.params, updates), state.masks)
    state = state.replace(params=params, opt_state=opt_state)
    if state.scales is None or state.scale_opt_state is None:
        return state
    updates, scale_opt_state = tx.update(scale_grads, state.scale_opt_state, state.scales)
    scales = unit_scales_where_masked(optax.apply_updates(state.scales, updates), state.masks)
    return state.replace(scales=scales, scale_opt_state=scale_opt_state)


def reinitialised_at(
    state: NetState, params: Params, positions: Any, tx: optax.GradientTransformation
) -> NetState:
    """``state`` with new ``params`` whose entries at ``positions`` (bool arrays, None where
    untouched) were re-initialised or zeroed: the moments there start fresh, and a
    reparameterised network's scales there restart at 1 (with fresh moments), so the effective
    weight is the new parameter."""
    state = state.replace(params=params,
                          opt_state=zero_moments_at(state.opt_state, positions, tx))
    if state.scales is None:
        return state
    scaled_positions = jax.tree.map(lambda s, where: None if s is None else where, state.scales,
                                    positions, is_leaf=is_none)
    state = state.replace(scales=unit_scales_at(state.scales, scaled_positions))
    if state.scale_opt_state is None:  # the method's own scales (it restarts their state)
        return state
    return state.replace(scale_opt_state=zero_moments_at(state.scale_opt_state,
                                                         scaled_positions, tx))


def zero_moments_where_masked(
    opt_state: optax.OptState, masks: Masks, tx: optax.GradientTransformation
) -> optax.OptState:
    """Zero every parameter-shaped optimizer leaf (Adam's mu and nu...) where ``masks`` is False.

    Methods that change masks call this so that a pruned or regrown weight starts from fresh
    moments.
    """
    return optax.tree_utils.tree_map_params(
        tx, lambda leaf, m: leaf if m is None else jnp.where(m, leaf, 0), opt_state, masks,
        is_leaf=is_none,
    )


def zero_moments_at(
    opt_state: optax.OptState, positions: Any, tx: optax.GradientTransformation
) -> optax.OptState:
    """Zero every parameter-shaped optimizer leaf where ``positions`` is True.

    ``positions`` is congruent with the params: bool arrays, or None for leaves left alone. Methods
    call this for weights they prune, regrow or re-initialise, so those start from fresh moments.
    """
    return optax.tree_utils.tree_map_params(
        tx, lambda leaf, where: leaf if where is None else jnp.where(where, 0, leaf), opt_state,
        positions, is_leaf=is_none,
    )


def fresh_adam(opt_state: optax.OptState) -> optax.OptState:
    """``opt_state`` with every Adam state (step count, moments) as at initialisation: a new
    optimizer for methods that start one per task."""
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    return jax.tree.map(lambda s: jax.tree.map(jnp.zeros_like, s) if is_adam(s) else s,
                        opt_state, is_leaf=is_adam)


def mask_counts(masks: Masks) -> tuple[jax.Array, int]:
    """(active weights, maskable weights) over the masked leaves of one network."""
    leaves = [m for m in jax.tree.leaves(masks, is_leaf=is_none) if m is not None]
    if not leaves:
        return jnp.zeros((), jnp.int32), 0
    active = sum(jnp.sum(m, dtype=jnp.int32) for m in leaves)
    return active, sum(m.size for m in leaves)


def network_sparsity(masks: Masks) -> jax.Array:
    """Masked-out weights / maskable weights of one network (0.0 for a dense network)."""
    active, total = mask_counts(masks)
    if total == 0:
        return jnp.zeros((), jnp.float32)
    return 1.0 - active.astype(jnp.float32) / total
