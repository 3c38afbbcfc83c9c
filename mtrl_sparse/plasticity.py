"""Plasticity diagnostics: effective rank, Fisher trace and per-layer sparsity.

Every function is pure and jit-compatible (Python control flow only on static structure: list
lengths, tree structure, shapes), so it can be used inside a jitted update or on a checkpoint.

* Dormant neurons live one layer down, in ``mtrl_sparse.agents.neurons`` (the ReDo method uses
  them too); the network's weight norm and the fraction of mask entries that changed live in
  ``mtrl_sparse.agents.trees``.
* Effective rank (Kumar et al. 2021, "Implicit Under-Parameterization Inhibits Data-Efficient
  Deep RL"): ``srank_delta(Phi) = min{k : sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta}``.
* Fisher trace: the trace of the empirical Fisher information of the policy,
  ``Tr F = E_i ||grad_theta log pi(a_i | s_i)||^2`` (the diagonal Fisher of Kirkpatrick et al.
  2017, summed; used as a plasticity / curvature probe by Lyle et al. 2022, 2023).
* Per-layer sparsity.

Shapes: ``B`` batch, ``N`` units of one layer, ``D`` feature size, ``A`` action size.
Path keys of the dict-valued functions are the "/"-joined tree paths of the leaves, e.g.
``"params/mlp/hidden_0/kernel"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from mtrl_sparse.agents.tree_paths import path_str

_ACTION_CLIP = 1.0 - 1e-6


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


# ----------------------------------------------------------------------------- sparsity


def layer_sparsity(masks: Any) -> dict[str, jax.Array]:
    """Masked-out fraction of every masked leaf (None leaves skipped) -> {path: () float32}."""
    flat, _ = jax.tree_util.tree_flatten_with_path(masks)
    return {path_str(path): 1.0 - jnp.mean(m.astype(jnp.float32)) for path, m in flat}
