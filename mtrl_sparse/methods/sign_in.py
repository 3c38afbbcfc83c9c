"""``sign_in``: Sign-In, sparse training with the weights reparameterised as ``theta = m * w``.

Gadhikar & Burkholz 2025, "Sign-In to the Lottery: Reparameterizing Sparse Training From
Scratch". Every maskable weight is the product of a scale ``m`` and a parameter ``w``, both
trained by the network's optimizer (``agents.net_state``: the state's ``scales`` and ``params``;
the forward pass reads ``mask * m * w``). Under gradient flow ``d theta = -(m^2 + w^2) g dt``, so
large weights move faster than small ones and a weight of the wrong sign can cross zero sooner
than plain training lets it. Every ``rescale_every_updates`` updates (and at initialisation) each
pair is rebalanced without changing ``theta``: ``m <- sqrt((beta + sqrt(beta^2 + 4 theta^2)) / 2)``,
``w <- theta / m``, so that ``m^2 - w^2 = beta``; optimizer moments are kept. A weight that is
(re)grown starts at ``(m, w) = (1, 0)``; re-initialised weights (Reset, ReDo) restart at scale 1.
Target networks track the effective weights (SAC's target critic averages ``masked_params``).

Combine with a mask method (``static+sign_in``, ``set+sign_in``, ``rigl+sign_in``); magnitude
criteria (GMP, SET's drop) rank ``|m * w|``. Alone it reparameterises a dense network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from mtrl_sparse.agents.net_state import (
    MethodContext,
    NetState,
    apply_masks,
    effective_weights,
    unit_scales_where_masked,
)
from mtrl_sparse.agents.trees import is_none
from mtrl_sparse.methods.base import Method, MethodEntry, NetworkMethodSettings
from mtrl_sparse.methods.topology import no_masks


@dataclass(frozen=True)
class SignInOptions:
    """Sign-In's reparameterisation of the networks that run ``sign_in``."""

    beta: float = 1.0
    """The balance m^2 - w^2 restored at every rescaling (the paper's beta = 1)."""
    rescale_every_updates: int = 1000
    """Updates between two rescalings (not stated by the paper; an interval, so scaled with the
    network's interval scale)."""


def check_sign_in_options(options: SignInOptions) -> None:
    """ValueError (one line) for a non-positive beta or interval."""
    if options.beta <= 0 or options.rescale_every_updates <= 0:
        raise ValueError("sign_in needs beta > 0 and rescale_every_updates > 0; got "
                         f"{options.beta} and {options.rescale_every_updates}")


def balanced_split(theta: jax.Array, beta: float) -> tuple[jax.Array, jax.Array]:
    """``(m, w)`` with ``m * w = theta`` and ``m^2 - w^2 = beta``, ``m > 0``."""
    m = jnp.sqrt((beta + jnp.sqrt(beta ** 2 + 4.0 * jnp.square(theta))) / 2.0)
    return m, theta / m


def split_weights(weights: Any, maskable: Any, beta: float) -> tuple[Any, Any]:
    """``(params, scales)`` of ``weights``: maskable leaves split by ``balanced_split``, the
    others unchanged with no scale (None)."""
    scales = jax.tree.map(lambda x, f: balanced_split(x, beta)[0] if f else None, weights,
                          maskable)
    params = jax.tree.map(lambda m, x: x if m is None else x / m, scales, weights,
                          is_leaf=is_none)
    return params, scales


def balance_error(params: Any, scales: Any, masks: Any, beta: float) -> jax.Array:
    """The largest |m^2 - w^2 - beta| over the active reparameterised weights, () float32."""
    per_leaf = jax.tree.map(
        lambda m, w, mask: None if m is None else jnp.max(jnp.where(
            True if mask is None else mask, jnp.abs(m * m - w * w - beta), 0.0)),
        scales, params, masks, is_leaf=is_none)
    leaves = jax.tree.leaves(per_leaf)
    return (jnp.max(jnp.stack(leaves)) if leaves else jnp.zeros(())).astype(jnp.float32)


def sign_in(settings: NetworkMethodSettings, options: SignInOptions) -> Method:
    """Rescaling every ``options.rescale_every_updates`` updates; state: ``rescales`` and
    ``balance_error`` (the largest |m^2 - w^2 - beta| over active weights before the last
    rescaling)."""
    del settings
    every, beta = options.rescale_every_updates, options.beta

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, dict]:
        del maskable, key
        return no_masks(params), {
            "rescales": jnp.zeros((), jnp.int32),
            "balance_error": jnp.zeros((), jnp.float32),
        }

    def transform(net_state: NetState, step: jax.Array, key: jax.Array,
                  context: MethodContext) -> NetState:
        del key, context

        def rescale(state: NetState) -> NetState:
            theta = effective_weights(state)
            maskable = jax.tree.map(lambda s: s is not None, state.scales, is_leaf=is_none)
            params, scales = split_weights(theta, maskable, beta)
            error = balance_error(state.params, state.scales, state.masks, beta)
            return state.replace(
                params=apply_masks(params, state.masks),
                scales=unit_scales_where_masked(scales, state.masks),
                method_state={"rescales": state.method_state["rescales"] + 1,
                              "balance_error": error})

        if net_state.scales is None:
            raise ValueError("sign_in needs a network built with its reparameterisation "
                             "(build_network)")
        return jax.lax.cond((step % every == 0) & (step > 0), rescale, lambda s: s, net_state)

    return Method(init=init, transform=transform)


ENTRY = MethodEntry(
    name="sign_in",
    kind="plasticity",
    description="Sign-In: weights trained as m * w, rebalanced to m^2 - w^2 = beta "
                "periodically (combine with static, set or rigl masks)",
    source="Gadhikar & Burkholz 2025, Sign-In to the Lottery",
    build=sign_in,
    options=SignInOptions,
    check=check_sign_in_options,
    reparameterize=lambda options: lambda weights, maskable: split_weights(
        weights, maskable, options.beta),
)
