"""``reset``: periodic re-initialisation of the last layers of a network.

Nikishin et al. 2022, "The Primacy Bias in Deep Reinforcement Learning" (ICML, arXiv 2205.07802);
settings of Todorov et al. 2025 (arXiv 2508.06871): the output layer only (``heads``), every
100,000 updates, at most 2 times. At update k x ``every_updates``, k = 1 .. ``max_resets``, every
parameter leaf under a module named in ``layers`` (kernel and bias) takes its value from a fresh
initialisation of the network (``context.init_params(key)``), and the optimizer moments of those
leaves (Adam's mu and nu) are zeroed; every other weight and moment is left bit-identical. Adam's
step count is shared by the whole network and is not reset, so its bias correction no longer
offsets the zeroed moments: for a steady gradient, a re-initialised leaf's updates reach ~6.5x a
fresh Adam's after ~10 updates and are still ~1.3x after 1,000 (a fresh optimizer state per layer,
as with PyTorch's per-tensor Adam state, would not do this).

Composed with a sparsity method (e.g. ``gmp+reset``), the masks are kept: the re-initialised
weights are multiplied by them, so the mask invariant holds. The method draws no masks itself.

Deviation from Nikishin et al., who also reset the target networks: SAC's target critic is not
reset with the online heads; it tracks them through its Polyak averaging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from mtrl_sparse.agents.net_state import MethodContext, NetState, reinitialised_at
from mtrl_sparse.agents.tree_paths import key_name
from mtrl_sparse.methods.base import Method, MethodEntry, NetworkMethodSettings
from mtrl_sparse.methods.topology import no_masks


@dataclass(frozen=True)
class ResetOptions:
    """Periodic resets of the networks that run ``reset``."""

    every_updates: int = 100_000
    """Updates between two resets (reference setting: 100,000)."""
    max_resets: int = 2
    """At most this many resets over the run, at every_updates x 1, 2, ... (reference: 2)."""
    layers: tuple[str, ...] = ("heads",)
    """Module names whose parameters are re-initialised: every leaf under a path component with
    one of these names (kernel and bias). ``heads`` is the output layer of every head."""


def check_reset_options(options: ResetOptions) -> None:
    """ValueError (one line) for options that define no reset schedule."""
    if options.every_updates <= 0:
        raise ValueError(f"reset every_updates must be > 0; got {options.every_updates}")
    if options.max_resets < 0:
        raise ValueError(f"reset max_resets must be >= 0; got {options.max_resets}")
    if isinstance(options.layers, str) or not options.layers:
        raise ValueError(f"reset layers must be a non-empty tuple of module names; "
                         f"got {options.layers!r}")


def selected_leaves(params: Any, layers: tuple[str, ...]) -> Any:
    """The tree of ``params`` with a Python bool per leaf: True under a module named in ``layers``.

    ValueError (at trace time) when no leaf is selected, naming the modules that exist.
    """

    def under_layers(path: tuple, leaf: Any) -> bool:
        del leaf
        return any(key_name(k) in layers for k in path[:-1])

    selected = jax.tree_util.tree_map_with_path(under_layers, params)
    if not any(jax.tree.leaves(selected)):
        paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        modules = sorted({key_name(k) for path in paths for k in path[:-1]})
        raise ValueError(f"reset layers {tuple(layers)} name no module of the network; "
                         f"its modules are {modules}")
    return selected


def reinitialise(params: Any, masks: Any, fresh: Any, selected: Any) -> Any:
    """``fresh * mask`` at the selected leaves (``fresh`` alone where the mask is None), ``params``
    elsewhere; ``fresh`` is congruent with ``params``."""

    def pick(p: jax.Array, m: jax.Array | None, f: jax.Array, chosen: bool) -> jax.Array:
        if not chosen:
            return p
        f = f.astype(p.dtype)
        return f if m is None else jnp.where(m, f, jnp.zeros((), p.dtype))

    return jax.tree.map(pick, params, masks, fresh, selected, is_leaf=lambda x: x is None)


def reset(settings: NetworkMethodSettings, options: ResetOptions) -> Method:
    """Re-initialise the ``options.layers`` of the network every ``options.every_updates`` updates,
    at most ``options.max_resets`` times; the state counts the resets done (``resets``)."""
    del settings
    every = options.every_updates
    last_event = options.max_resets * every

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, dict]:
        del maskable, key
        return no_masks(params), {"resets": jnp.zeros((), jnp.int32)}

    def transform(
        net_state: NetState, step: jax.Array, key: jax.Array, context: MethodContext
    ) -> NetState:
        selected = selected_leaves(net_state.params, options.layers)

        def reset_event(state: NetState) -> NetState:
            variables = context.init_params(key)
            fresh = {collection: variables[collection] for collection in state.params}
            params = reinitialise(state.params, state.masks, fresh, selected)
            positions = jax.tree.map(lambda p, s: jnp.ones(p.shape, bool) if s else None,
                                     state.params, selected)
            state = reinitialised_at(state, params, positions, context.optimizer)
            return state.replace(method_state={
                **state.method_state, "resets": state.method_state["resets"] + 1})

        is_event = (step % every == 0) & (step >= every) & (step <= last_event)
        return jax.lax.cond(is_event, reset_event, lambda state: state, net_state)

    return Method(init=init, transform=transform)


ENTRY = MethodEntry(
    name="reset",
    kind="plasticity",
    description="re-initialise the output layer every N updates, at most K times",
    source="Nikishin et al. 2022, The Primacy Bias in Deep RL (ICML, arXiv 2205.07802)",
    build=reset,
    options=ResetOptions,
    check=check_reset_options,
)
