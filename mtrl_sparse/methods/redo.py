"""``redo``: Recycling Dormant neurons.

Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning" (ICML, arXiv
2302.12902). Every ``every_updates`` updates, the hidden activations of the network on the
update's batch (``context.activations`` of the effective weights) give each neuron ``i`` of a
hidden layer the score ``s_i = E|h_i| / mean_k E|h_k|``; neuron ``i`` is dormant when it is alive
and ``s_i <= tau`` (``mtrl_sparse.agents.neurons``: in a sparse network, a neuron whose incoming
weights are all masked is not alive, is left out of the layer mean and is never recycled).
Defaults: tau = 0.001, every 5,000 updates.

The dormant sets of all layers are computed first, from the same activations. Then, layer by layer
in the order of ``context.neuron_layers``, each dormant neuron is recycled:
- its incoming kernel column and bias entry take their values from a fresh initialisation of the
  network (``context.init_params(key)``), multiplied by the mask (masks are kept);
- its outgoing kernel row is set to zero, so the recycled neuron does not change the network's
  output at first;
- the optimizer moments (every parameter-shaped optimizer leaf: Adam's mu and nu) at exactly these
  positions are zeroed.
Where an outgoing row of one layer meets an incoming column of the next (both neurons dormant), the
later layer's re-initialisation wins. A LayerNorm between a Dense and its activation is left alone.
Every other weight and moment is bit-identical (Adam's step count, shared by the network, too).
The method draws no masks itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from mtrl_sparse.agents.net_state import MethodContext, NetState, masked_params, reinitialised_at
from mtrl_sparse.agents.networks import NeuronLayer
from mtrl_sparse.agents.neurons import alive_neurons, dormant_scores, pooled_fraction
from mtrl_sparse.agents.tree_paths import get_path, has_path, set_path
from mtrl_sparse.methods.base import Method, MethodEntry, NetworkMethodSettings
from mtrl_sparse.methods.topology import LayerSlices, named_leaf_slices, no_masks


@dataclass(frozen=True)
class ReDoOptions:
    """Recycling of the dormant neurons of the networks that run ``redo``."""

    every_updates: int = 5000
    """Updates between two recycling events."""
    tau: float = 0.001
    """A neuron is dormant when its score s_i = E|h_i| / mean_k E|h_k| is <= tau."""


def check_redo_options(options: ReDoOptions) -> None:
    """ValueError (one line) for options that define no recycling schedule."""
    if options.every_updates <= 0:
        raise ValueError(f"redo every_updates must be > 0; got {options.every_updates}")
    if not 0.0 <= options.tau < 1.0:
        raise ValueError(f"redo tau must be in [0, 1); got {options.tau}")


# ----------------------------------------------------------------------------- dormant neurons


def dormant_neurons(
    activations: Any, masks: Any, layers: Sequence[NeuronLayer], tau: float,
    layer_slices: LayerSlices = (),
) -> tuple[list[jax.Array], list[jax.Array]]:
    """(dormant, alive) per layer, each (N,) bool, from the sown ``activations`` (B, N) per layer.

    A neuron is alive when one of its incoming weights is unmasked, dormant when alive with score
    ``<= tau``. A layer whose incoming kernel stacks several tasks' layers along its neuron axis
    (``layer_slices``: the per-task head units) is scored task by task: each task's units against
    their own mean, as separate per-task layers would be.
    """
    dormant, alive = [], []
    for layer in layers:
        h = get_path(activations, layer.activation)
        h = h.reshape(-1, h.shape[-1])
        kernel_mask = get_path(masks, (*layer.incoming, "kernel"))
        a = alive_neurons(kernel_mask, h.shape[-1])
        slices = named_leaf_slices("/".join((*layer.incoming, "kernel")), layer_slices)
        if slices is not None and slices[0] == -1:  # stacked along the neuron axis
            count = slices[1]
            scores = jax.vmap(dormant_scores, in_axes=(1, 0))(
                h.reshape(h.shape[0], count, -1), a.reshape(count, -1)).reshape(-1)
        else:
            scores = dormant_scores(h, a)
        dormant.append(a & (scores <= tau))
        alive.append(a)
    return dormant, alive


# ----------------------------------------------------------------------------- recycling


def _masked(value: jax.Array, mask: jax.Array | None) -> jax.Array:
    return value if mask is None else jnp.where(mask, value, jnp.zeros((), value.dtype))


def _touch(positions: Any, path: tuple[str, ...], where: jax.Array) -> Any:
    """``positions`` with ``where`` OR-ed into its leaf at ``path`` (None counts as all False)."""
    old = get_path(positions, path)
    return set_path(positions, path, where if old is None else old | where)


def _recycle_slice(
    params: Any, positions: Any, masks: Any, path: tuple[str, ...], where: jax.Array,
    value: jax.Array,
) -> tuple[Any, Any]:
    """Set the leaf at ``path`` to ``value * mask`` where ``where`` (broadcast to its shape) holds;
    record those positions for the optimizer moments."""
    leaf = get_path(params, path)
    where = jnp.broadcast_to(where, leaf.shape)
    new = jnp.where(where, _masked(value.astype(leaf.dtype), get_path(masks, path)), leaf)
    return set_path(params, path, new), _touch(positions, path, where)


def recycle_layer(
    params: Any, positions: Any, masks: Any, fresh: Any, layer: NeuronLayer, dormant: jax.Array
) -> tuple[Any, Any]:
    """Recycle the ``dormant`` (N,) neurons of one layer: incoming kernel columns and bias entries
    from ``fresh`` (times the mask), outgoing kernel rows to zero. Returns (params, positions)."""
    kernel = (*layer.incoming, "kernel")
    params, positions = _recycle_slice(params, positions, masks, kernel, dormant,
                                       get_path(fresh, kernel))
    bias = (*layer.incoming, "bias")
    if has_path(params, bias):
        params, positions = _recycle_slice(params, positions, masks, bias, dormant,
                                           get_path(fresh, bias))
    outgoing = (*layer.outgoing, "kernel")
    zeros = jnp.zeros(get_path(params, outgoing).shape, get_path(params, outgoing).dtype)
    return _recycle_slice(params, positions, masks, outgoing, dormant[:, None], zeros)


def redo(settings: NetworkMethodSettings, options: ReDoOptions) -> Method:
    """Recycle the tau-dormant neurons every ``options.every_updates`` updates. State:
    ``recycled_last`` (neurons recycled at the last event), ``recycled_total`` and
    ``dormant_fraction_last`` (dormant / alive neurons at the last event, pooled over layers).
    Per-task head units are scored per task (``settings.layer_slices``)."""
    every = options.every_updates

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, dict]:
        del maskable, key
        return no_masks(params), {
            "recycled_last": jnp.zeros((), jnp.int32),
            "recycled_total": jnp.zeros((), jnp.int32),
            "dormant_fraction_last": jnp.zeros((), jnp.float32),
        }

    def transform(
        net_state: NetState, step: jax.Array, key: jax.Array, context: MethodContext
    ) -> NetState:
        layers = tuple(context.neuron_layers)
        if not layers:
            raise ValueError("redo needs the network's neuron layers; the context names none")

        def recycle_event(state: NetState) -> NetState:
            activations = context.activations(masked_params(state))
            dormant, alive = dormant_neurons(activations, state.masks, layers, options.tau,
                                             settings.layer_slices)
            fresh = context.init_params(key)
            params, positions = state.params, no_masks(state.params)
            for layer, d in zip(layers, dormant, strict=True):
                params, positions = recycle_layer(params, positions, state.masks, fresh, layer, d)
            state = reinitialised_at(state, params, positions, context.optimizer)
            recycled = sum(jnp.sum(d, dtype=jnp.int32) for d in dormant)
            return state.replace(method_state={
                **state.method_state,
                "recycled_last": recycled,
                "recycled_total": state.method_state["recycled_total"] + recycled,
                "dormant_fraction_last": pooled_fraction(dormant, alive),
            })

        is_event = (step % every == 0) & (step >= every)
        return jax.lax.cond(is_event, recycle_event, lambda state: state, net_state)

    return Method(init=init, transform=transform)


ENTRY = MethodEntry(
    name="redo",
    kind="plasticity",
    description="recycle dormant neurons: re-init incoming, zero outgoing weights",
    source="Sokar et al. 2023, The Dormant Neuron Phenomenon in Deep RL (ICML, "
           "arXiv 2302.12902)",
    build=redo,
    options=ReDoOptions,
    check=check_redo_options,
)
