"""Plasticity diagnostics: dormant neurons, effective rank, Fisher trace, norms and mask churn.

Every function is pure and jit-compatible (Python control flow only on static structure: list
lengths, tree structure, shapes), so it can be used inside a jitted update or on a checkpoint.

* Dormant neurons (ReDo, Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL"):
  neuron ``i`` of a layer has score ``s_i = E_x|h_i(x)| / mean_k E_x|h_k(x)|`` and is
  ``tau``-dormant when ``s_i <= tau``. In a sparse network a neuron whose incoming weights are all
  masked is not a neuron at all; it is excluded from the layer mean and from the counts.
* Effective rank (Kumar et al. 2021, "Implicit Under-Parameterization Inhibits Data-Efficient
  Deep RL"): ``srank_delta(Phi) = min{k : sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta}``.
* Fisher trace: the trace of the empirical Fisher information of the policy,
  ``Tr F = E_i ||grad_theta log pi(a_i | s_i)||^2`` (the diagonal Fisher of Kirkpatrick et al.
  2017, summed; used as a plasticity / curvature probe by Lyle et al. 2022, 2023).
* Parameter norms, per-layer sparsity and the fraction of mask entries that changed.

Shapes: ``B`` batch, ``N`` units of one layer, ``D`` feature size, ``A`` action size.
Path keys of the dict-valued functions are the "/"-joined tree paths of the leaves, e.g.
``"params/mlp/hidden_0/kernel"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mtrl_sparse.agents.tree_paths import key_name, path_str

_ACTION_CLIP = 1.0 - 1e-6


def _is_none(x: Any) -> bool:
    return x is None


# ----------------------------------------------------------------------------- dormant neurons


def alive_neurons(kernel_mask: jax.Array | None, num_units: int) -> jax.Array:
    """(N,) bool: a unit is alive when at least one of its incoming weights is unmasked.

    ``kernel_mask`` is the mask of the layer's incoming kernel, (in, N) (or a convolution kernel
    (..., in, N)); None (an unmasked layer) -> every unit alive.
    """
    if kernel_mask is None:
        return jnp.ones((num_units,), bool)
    return jnp.any(kernel_mask.reshape(-1, kernel_mask.shape[-1]), axis=0)


def hidden_alive(mlp_masks: Any, widths: Sequence[int]) -> list[jax.Array]:
    """Alive units of the hidden layers ``hidden_0 .. hidden_{n-1}`` of a ``MultiHeadMLP``.

    ``mlp_masks`` is the masks subtree of one MLP (``{"hidden_0": {"kernel": ..., ...}, ...}``,
    or None for a dense network); ``widths`` are the hidden sizes. Returns a list of (N_l,) bool.
    """
    alive = []
    for layer, width in enumerate(widths):
        layer_masks = None if mlp_masks is None else mlp_masks.get(f"hidden_{layer}")
        kernel_mask = None if layer_masks is None else layer_masks.get("kernel")
        alive.append(alive_neurons(kernel_mask, width))
    return alive


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
    dormant, num_dormant, num_alive = [], jnp.zeros(()), jnp.zeros(())
    for h, a in zip(activations, alive, strict=True):
        a = jnp.ones((h.shape[-1],), bool) if a is None else a
        d = a & (dormant_scores(h, a) <= tau)
        dormant.append(d)
        num_dormant = num_dormant + jnp.sum(d, dtype=jnp.float32)
        num_alive = num_alive + jnp.sum(a, dtype=jnp.float32)
    return num_dormant / jnp.maximum(num_alive, 1.0), dormant


# ----------------------------------------------------------------------------- effective rank


def effective_rank(features: jax.Array, delta: float = 0.01) -> jax.Array:
    """srank_delta of (B, D) features -> () int32 (Kumar et al. 2021).

    The smallest ``k`` such that the ``k`` largest singular values hold a ``1 - delta`` share of
    their sum; 0 for all-zero features.
    """
    sigma = jnp.linalg.svd(features.astype(jnp.float32), compute_uv=False)  # descending
    total = jnp.sum(sigma)
    reached = jnp.cumsum(sigma) >= (1.0 - delta) * total
    k = jnp.argmax(reached).astype(jnp.int32) + 1  # first index reaching the share, 1-based
    return jnp.where(total > 0, k, 0).astype(jnp.int32)


# ----------------------------------------------------------------------------- Fisher trace


def tanh_gaussian_log_prob(mean: jax.Array, log_std: jax.Array, actions: jax.Array) -> jax.Array:
    """log pi(a | s) of a = tanh(u), u ~ N(mean, exp(log_std)^2), for given actions in (-1, 1).

    (..., A) each -> (...). Actions are clipped to +-(1 - 1e-6) and inverted with arctanh; the
    change of variables uses log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), as
    ``mtrl_sparse.agents.sac.gaussian_tanh_sample`` does.
    """
    u = jnp.arctanh(jnp.clip(actions, -_ACTION_CLIP, _ACTION_CLIP))
    gauss = -0.5 * ((u - mean) * jnp.exp(-log_std)) ** 2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi)
    squash = 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))
    return jnp.sum(gauss - squash, axis=-1)


def actor_log_prob_fn(apply_fn: Callable[..., tuple[jax.Array, jax.Array]]) -> Callable:
    """A one-sample ``log_prob_fn`` for ``fisher_trace`` from a ``GaussianActor``'s apply.

    ``apply_fn(params, obs (B, D), task_ids (B,)) -> (mean, log_std)`` each (B, A), e.g.
    ``lambda p, o, t: actor.apply(apply_masks(p, masks), o, t)``. The returned function maps
    ``(params, obs (D,), task_id (), action (A,))`` to the scalar log pi(action | obs, task).
    """

    def log_prob(params: Any, obs: jax.Array, task_id: jax.Array, action: jax.Array) -> jax.Array:
        mean, log_std = apply_fn(params, obs[None], jnp.asarray(task_id)[None])
        return tanh_gaussian_log_prob(mean, log_std, action[None])[0]

    return log_prob


def per_sample_sq_grad_norms(
    log_prob_fn: Callable, params: Any, obs: jax.Array, task_ids: jax.Array, actions: jax.Array,
    chunk_size: int = 64,
) -> jax.Array:
    """(B,) squared norms ||grad_params log_prob_fn(params, obs_i, task_i, a_i)||^2.

    ``obs`` (B, D), ``task_ids`` (B,), ``actions`` (B, A), held fixed (no gradient through them).
    """
    actions = jax.lax.stop_gradient(actions)
    if not jax.tree.leaves(params):
        return jnp.zeros((obs.shape[0],), jnp.float32)

    def one_sample(sample: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        grads = jax.grad(log_prob_fn)(params, *sample)
        return sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))

    # Chunks of samples at a time: a per-sample gradient is as large as the network.
    return jax.lax.map(one_sample, (obs, task_ids, actions), batch_size=chunk_size)


def fisher_trace(
    log_prob_fn: Callable, params: Any, obs: jax.Array, task_ids: jax.Array, actions: jax.Array,
    chunk_size: int = 64,
) -> jax.Array:
    """Trace of the empirical Fisher of the policy: mean_i ||grad_params log pi(a_i | s_i)||^2.

    ``log_prob_fn(params, obs_i (D,), task_id_i (), action_i (A,)) -> ()`` scores one sample
    (see ``actor_log_prob_fn``); ``obs`` (B, D), ``task_ids`` (B,), ``actions`` (B, A). This is
    the mean of per-sample squared gradient norms, not the squared norm of the mean gradient.
    Masked weights contribute nothing when ``log_prob_fn`` applies the masks. Returns () float.
    """
    return jnp.mean(
        per_sample_sq_grad_norms(log_prob_fn, params, obs, task_ids, actions, chunk_size))


# ----------------------------------------------------------------------------- norms and masks


def global_norm(tree: Any) -> jax.Array:
    """L2 norm over every leaf of ``tree`` (None leaves skipped) -> () float32."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def layer_norms(tree: Any) -> dict[str, jax.Array]:
    """L2 norm of every ``kernel`` leaf, keyed by its "/"-joined path -> {path: () float32}."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        path_str(path): jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))
        for path, x in flat
        if key_name(path[-1]) == "kernel"
    }


def layer_sparsity(masks: Any) -> dict[str, jax.Array]:
    """Masked-out fraction of every masked leaf (None leaves skipped) -> {path: () float32}."""
    flat, _ = jax.tree_util.tree_flatten_with_path(masks)
    return {path_str(path): 1.0 - jnp.mean(m.astype(jnp.float32)) for path, m in flat}


def mask_change_fraction(old_masks: Any, new_masks: Any) -> jax.Array:
    """Fraction of maskable entries whose mask value differs between two mask trees -> ().

    The trees share the structure of the params; a leaf that is None in both is not maskable and
    is skipped, a leaf that is None in only one counts that None as all True (unmasked). 0.0 when
    no leaf is masked.
    """
    old_leaves = jax.tree.leaves(old_masks, is_leaf=_is_none)
    new_leaves = jax.tree.leaves(new_masks, is_leaf=_is_none)
    if len(old_leaves) != len(new_leaves):
        raise ValueError("mask trees of different structure")
    changed, total = jnp.zeros((), jnp.float32), 0
    for old, new in zip(old_leaves, new_leaves, strict=True):
        if old is None and new is None:
            continue
        ref = new if old is None else old
        old = jnp.ones(ref.shape, bool) if old is None else old
        new = jnp.ones(ref.shape, bool) if new is None else new
        changed = changed + jnp.sum(old != new, dtype=jnp.float32)
        total += ref.size
    if total == 0:
        return jnp.zeros((), jnp.float32)
    return changed / total
