"""How every agent trains one masked network: its setup, its optimizer and one gradient step.

A network is built from a ``NetworkSetup``: the mask method that runs on it and what that method
declares as data (LayerNorm in the network, optax transforms around Adam). ``make_optimizer``
turns the setup into the network's optax chain. ``masked_gradient_step`` is the step every agent
takes for each of its networks:

1. value and gradient of the loss with respect to the effective weights ``params * masks``
   (``scales * params * masks`` for a reparameterised network, with the scales' noise where a
   method draws some: ``net_state.training_weights``);
2. the gradient with respect to ``params`` (and ``scales``) by the chain rule (zero where masked);
3. one optimizer step, after which the params are masked again (``apply_gradients``);
4. the method's ``transform(net_state, step, key, context)`` with the network's update count.

The agents (SAC, PPO) differ only in their losses and in the ``MethodContext`` they build.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtrl_sparse.agents.net_state import (
    MaskMethod,
    MethodContext,
    NetState,
    Reparameterize,
    apply_gradients,
    apply_masks,
    create_net_state,
    forward_weights,
    scaled_params,
    training_scales,
    training_weights,
)
from mtrl_sparse.agents.sparse_linear import with_index
from mtrl_sparse.agents.trees import global_norm, is_none


class NetworkSetup(NamedTuple):
    """How one network is built: its mask method and what that method declares as data.

    Attributes:
        method: the mask method (``init`` / ``transform``) of the network.
        layer_norm: LayerNorm after each hidden linear layer, before the activation.
        gradient_transforms: optax transforms applied to the (clipped) gradient before Adam,
            e.g. coupled L2 weight decay.
        update_transforms: optax transforms applied to Adam's update before the learning rate,
            e.g. decoupled weight decay.
        reparameterize: splits the initial weights into params and per-weight scales
            (``net_state.create_net_state``), e.g. Sign-In's ``theta = m * w``; None: plain
            weights.
        noisy_scales: the scales are the method's stochastic gates (IBM): it trains them and
            draws their noise; the network's optimizer leaves them alone.
        task_weights: ``(net_state, num_tasks) -> weights`` stacked over a leading task axis,
            task t's own view of the effective weights at index t (a method that isolates a
            sub-network per task, IBM); None: every task reads ``masked_params``.
        compute_density: None: the masked layers compute densely; else each kernel that
            ``kernel_layers`` covers computes with the sparse kernels while its density is at
            most this (1.0: always; ``net_state.create_net_state``).
        kernel_layers: ``(params, maskable) -> tree of bool``: the kernels sparse compute
            covers (None: every masked kernel).
    """

    method: MaskMethod
    layer_norm: bool = False
    gradient_transforms: tuple[optax.GradientTransformation, ...] = ()
    update_transforms: tuple[optax.GradientTransformation, ...] = ()
    reparameterize: Reparameterize | None = None
    noisy_scales: bool = False
    task_weights: Callable[[NetState, int], Any] | None = None
    compute_density: float | None = None
    kernel_layers: Callable[[Any, Any], Any] | None = None


def init_network_state(params: Any, tx: optax.GradientTransformation, setup: NetworkSetup,
                       key: jax.Array) -> NetState:
    """``create_net_state`` of a network built from ``setup`` (its method, reparameterisation,
    gates and sparse compute)."""
    return create_net_state(params, tx, setup.method, key, reparameterize=setup.reparameterize,
                            noisy_scales=setup.noisy_scales,
                            compute_density=setup.compute_density,
                            kernel_layers=setup.kernel_layers)


def make_optimizer(
    learning_rate: float, max_grad_norm: float | None, setup: NetworkSetup
) -> optax.GradientTransformation:
    """clip (none for ``max_grad_norm`` None) -> setup's gradient transforms -> Adam -> setup's
    update transforms -> learning rate."""
    clip = () if max_grad_norm is None else (optax.clip_by_global_norm(max_grad_norm),)
    return optax.chain(
        *clip,
        *setup.gradient_transforms,
        optax.scale_by_adam(),
        *setup.update_transforms,
        optax.scale_by_learning_rate(learning_rate),
    )


def masked_gradient_step(
    net_state: NetState,
    loss_fn: Callable[..., tuple[jax.Array, Any]],
    tx: optax.GradientTransformation,
    method: MaskMethod,
    step: jax.Array,
    key: jax.Array,
    context: MethodContext,
    *args: Any,
) -> tuple[NetState, Any, jax.Array]:
    """One gradient step of a masked network followed by its method's transform.

    ``loss_fn(weights, *args) -> (loss, aux)`` takes the effective weights ``params * masks``.
    ``step`` is the network's update count after this step (the unit of method schedules).
    The method receives ``context`` (the network fields the agent filled) with its gradient fields
    set: ``grads`` (w.r.t. the params, zero where masked), ``dense_grads`` (w.r.t. the effective
    weights, defined everywhere: what RigL grows by), ``optimizer`` (``tx``), ``scale_grads``
    (w.r.t. the scales, for a reparameterised network) and ``params_before`` (the params
    before the optimizer step).

    Returns the new network state, ``aux`` and the global norm of ``grads`` (before clipping).
    """
    weights = training_weights(net_state)

    def value_and_grads(index: Any) -> tuple[tuple[jax.Array, Any], Any]:
        return jax.value_and_grad(lambda w, *a: loss_fn(with_index(w, index), *a),
                                  has_aux=True)(weights, *args)

    due = getattr(method, "dense_grads_due", None)
    if net_state.sparse_index is None:
        (_, aux), dense_grads = value_and_grads(None)
    elif due is None:  # no method reads the gradient at inactive weights
        (_, aux), dense_grads = value_and_grads(net_state.sparse_index)
    else:  # dense where a method reads it (RigL's regrowth, APP's saliency), sparse elsewhere
        (_, aux), dense_grads = jax.lax.cond(
            due(net_state, step, context), lambda: value_and_grads(None),
            lambda: value_and_grads(net_state.sparse_index))
    grads = apply_masks(dense_grads, net_state.masks)  # chain rule through params * masks
    scale_grads = None
    if net_state.scales is not None:  # chain rule through scales * params
        scale_grads = jax.tree.map(lambda s, g, p: None if s is None else g * p,
                                   net_state.scales, grads, net_state.params, is_leaf=is_none)
        grads = scaled_params(grads, training_scales(net_state))
    params_before = net_state.params
    net_state = apply_gradients(net_state, grads, tx, scale_grads)
    context = context._replace(grads=grads, dense_grads=dense_grads, optimizer=tx,
                               scale_grads=scale_grads, params_before=params_before)
    net_state = method.transform(net_state, step, key, context)
    return net_state, aux, global_norm(grads)


def acting_weights(net_state: NetState, setup: NetworkSetup, num_tasks: int) -> Any:
    """The weights a network acts with: ``forward_weights``, or with per-task views
    (``setup.task_weights``) every task's own, stacked over a leading task axis (computed
    densely)."""
    if setup.task_weights is None:
        return forward_weights(net_state)
    return setup.task_weights(net_state, num_tasks)


def apply_task_views(apply: Callable[..., Any], setup: NetworkSetup, weights: Any,
                     task_ids: jax.Array, *inputs: Any) -> Any:
    """``apply(weights, *inputs, task_ids)`` on ``acting_weights``: with per-task views, each
    sample's outputs (leading axis B) come from its own task's view (one forward pass per
    view)."""
    if setup.task_weights is None:
        return apply(weights, *inputs, task_ids)
    per_view = jax.vmap(lambda w: apply(w, *inputs, task_ids))(weights)  # leaves (T, B, ...)
    rows = jnp.arange(task_ids.shape[0])
    return jax.tree.map(lambda x: x[task_ids, rows], per_view)
