"""Neuron-level measures of a network: which units are alive, and which are dormant.

Pure and jit-compatible; used by the ReDo method (to choose the neurons it recycles) and by the
plasticity probes (to report the dormant fraction).

* Alive (docs/pages/design.md, Conventions): a unit is alive when at least one of its
  incoming weights is unmasked; a unit whose incoming weights are all masked is not a neuron
  at all, and is left out of every neuron metric.
* Dormant (ReDo, Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL"): unit ``i`` of a
  layer has score ``s_i = E_x|h_i(x)| / mean_k E_x|h_k(x)|`` (the mean over alive units) and is
  ``tau``-dormant when it is alive and ``s_i <= tau``.

Shapes: ``B`` batch, ``N`` units of one layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def alive_neurons(kernel_mask: jax.Array | None, num_units: int) -> jax.Array:
    """(N,) bool: a unit is alive when at least one of its incoming weights is unmasked.

    ``kernel_mask`` is the mask of the layer's incoming kernel, (in, N) (or a convolution kernel
    (..., in, N)); None (an unmasked layer) -> every unit alive.
    """
    if kernel_mask is None:
        return jnp.ones((num_units,), bool)
    return jnp.any(kernel_mask.reshape(-1, kernel_mask.shape[-1]), axis=0)


def dormant_scores(activations: jax.Array, alive: jax.Array | None = None) -> jax.Array:
    """ReDo scores of one layer: (B, N) post-activations, (N,) bool alive -> (N,) float32.

    ``s_i = E_x|h_i(x)| / mean over alive k of E_x|h_k(x)|``. When that mean is 0 (a layer whose
    alive units never fire) every score is 0. Scores of dead (not alive) units are computed the
    same way but carry no meaning; ``dormant_fraction`` ignores them.
    """
    mean_abs = jnp.mean(jnp.abs(activations.astype(jnp.float32)), axis=0)  # (N,)
    if alive is None:
        alive = jnp.ones(mean_abs.shape, bool)
    num_alive = jnp.sum(alive, dtype=jnp.float32)
    layer_mean = jnp.sum(jnp.where(alive, mean_abs, 0.0)) / jnp.maximum(num_alive, 1.0)
    positive = layer_mean > 0
    return jnp.where(positive, mean_abs / jnp.where(positive, layer_mean, 1.0), 0.0)


def pooled_fraction(dormant: list[jax.Array], alive: list[jax.Array]) -> jax.Array:
    """Dormant units over alive units, pooled over layers: () float32 (0.0 when none is
    alive). ``dormant[l]`` and ``alive[l]`` are (N_l,) bool."""
    num_dormant = sum((jnp.sum(d, dtype=jnp.float32) for d in dormant), jnp.zeros(()))
    num_alive = sum((jnp.sum(a, dtype=jnp.float32) for a in alive), jnp.zeros(()))
    return num_dormant / jnp.maximum(num_alive, 1.0)


def dormant_fraction(
    activations: list[jax.Array], tau: float, alive: list[jax.Array] | None = None
) -> tuple[jax.Array, list[jax.Array]]:
    """Fraction of tau-dormant units among alive units of the given hidden layers, pooled.

    ``activations[l]`` is (B, N_l), the post-activation outputs of hidden layer ``l`` (the caller
    leaves out the output layer); ``alive[l]`` is (N_l,) bool (None: every unit alive). A unit is
    dormant when it is alive and its score is ``<= tau``. Returns (fraction () float32, one (N_l,)
    bool dormant mask per layer). The fraction is 0.0 when no unit is alive.
    """
    if alive is None:
        alive = [None] * len(activations)
    if len(alive) != len(activations):
        raise ValueError(f"{len(activations)} activation layers but {len(alive)} alive masks")
    alive = [jnp.ones((h.shape[-1],), bool) if a is None else a
             for h, a in zip(activations, alive, strict=True)]
    dormant = [a & (dormant_scores(h, a) <= tau) for h, a in zip(activations, alive, strict=True)]
    return pooled_fraction(dormant, alive), dormant
