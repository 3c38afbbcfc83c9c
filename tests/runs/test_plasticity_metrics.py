"""Plasticity diagnostics against hand-computed values (mtrl_sparse.plasticity, and the neuron and
tree measures below it in mtrl_sparse.agents.neurons and .trees)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrl_sparse.agents.net_state import apply_masks
from mtrl_sparse.agents.networks import GaussianActor, NeuronLayer
from mtrl_sparse.agents.neurons import alive_neurons, dormant_fraction, dormant_scores
from mtrl_sparse.agents.sac import gaussian_tanh_sample
from mtrl_sparse.agents.trees import global_norm, mask_change_fraction
from mtrl_sparse.plasticity import (
    actor_log_prob_fn,
    effective_rank,
    fisher_trace,
    layer_sparsity,
    per_sample_sq_grad_norms,
    tanh_gaussian_log_prob,
)
from mtrl_sparse.probe import network_metrics

# ----------------------------------------------------------------------------- dormant neurons

# Two samples of a 4-unit layer; mean |h| per unit = [0, 1, 1, 2] (signs test the abs).
LAYER = jnp.array([[0.0, -1.0, 0.0, 2.0],
                   [0.0, 1.0, 2.0, -2.0]])


def test_dormant_scores_all_alive():
    # Layer mean of E|h| = (0 + 1 + 1 + 2) / 4 = 1 -> scores = [0, 1, 1, 2].
    np.testing.assert_allclose(dormant_scores(LAYER), [0.0, 1.0, 1.0, 2.0], rtol=1e-6)
    frac, (dormant,) = dormant_fraction([LAYER], tau=0.1)
    np.testing.assert_array_equal(dormant, [True, False, False, False])
    np.testing.assert_allclose(frac, 1 / 4, rtol=1e-6)
    # The threshold is inclusive: s <= tau; with tau = 1 the three units with s in {0, 1} are.
    frac, (dormant,) = dormant_fraction([LAYER], tau=1.0)
    np.testing.assert_array_equal(dormant, [True, True, True, False])
    np.testing.assert_allclose(frac, 3 / 4, rtol=1e-6)


def test_dormant_scores_exclude_dead_units_from_the_mean_and_the_counts():
    # Unit 3 dead: mean over alive = (0 + 1 + 1) / 3 = 2/3 -> scores = [0, 1.5, 1.5, 3].
    alive = jnp.array([True, True, True, False])
    np.testing.assert_allclose(dormant_scores(LAYER, alive), [0.0, 1.5, 1.5, 3.0], rtol=1e-6)
    frac, (dormant,) = dormant_fraction([LAYER], tau=0.1, alive=[alive])
    np.testing.assert_array_equal(dormant, [True, False, False, False])
    np.testing.assert_allclose(frac, 1 / 3, rtol=1e-6)  # 1 dormant among 3 alive

    # Unit 0 dead: mean over alive = (1 + 1 + 2) / 3 = 4/3 -> scores = [0, 0.75, 0.75, 1.5].
    alive = jnp.array([False, True, True, True])
    np.testing.assert_allclose(dormant_scores(LAYER, alive), [0.0, 0.75, 0.75, 1.5], rtol=1e-6)
    frac, (dormant,) = dormant_fraction([LAYER], tau=0.1, alive=[alive])
    np.testing.assert_array_equal(dormant, [False, False, False, False])  # score 0 but dead
    np.testing.assert_allclose(frac, 0.0)
    frac, (dormant,) = dormant_fraction([LAYER], tau=0.8, alive=[alive])
    np.testing.assert_array_equal(dormant, [False, True, True, False])
    np.testing.assert_allclose(frac, 2 / 3, rtol=1e-6)


def test_dormant_fraction_pools_layers_and_guards_silent_layers():
    silent = jnp.zeros((2, 3))  # layer mean 0: every alive unit dormant, no NaN
    alive = [jnp.ones(4, bool), jnp.array([True, True, False])]
    frac, dormant = jax.jit(dormant_fraction, static_argnums=1)([LAYER, silent], 0.1, alive)
    np.testing.assert_array_equal(dormant[0], [True, False, False, False])
    np.testing.assert_array_equal(dormant[1], [True, True, False])
    # (1 dormant of 4 alive) + (2 dormant of 2 alive) = 3 / 6.
    np.testing.assert_allclose(frac, 0.5, rtol=1e-6)
    assert np.all(np.isfinite(dormant_scores(silent)))
    # No alive unit at all: fraction 0, not NaN.
    frac, _ = dormant_fraction([silent], 0.1, [jnp.zeros(3, bool)])
    np.testing.assert_allclose(frac, 0.0)


def test_stacked_head_units_are_scored_per_task():
    """Two tasks' head units in one stacked layer, task 1's activations 10x smaller than task
    0's: pooled over the layer they would all score 0.18 (dormant at tau 0.2); scored against
    their own task's mean, none is dormant."""
    layer = NeuronLayer(("params", "heads"), ("params", "out"), ("intermediates", "heads"))
    h = jnp.concatenate([jnp.ones((8, 4)), 0.1 * jnp.ones((8, 4))], axis=1)  # (B, 2 tasks x 4)
    activations = {"intermediates": {"heads": h}}
    representation = ("intermediates", "heads")
    masks = {"params": {"heads": {"kernel": None}}}
    pooled = network_metrics("actor", activations, (layer,), representation, masks, 0.2, 0.01)
    per_task = network_metrics("actor", activations, (layer,), representation, masks, 0.2, 0.01,
                                (("heads/kernel", -1, 2),))
    assert float(pooled["plasticity/actor/dormant_fraction"]) == pytest.approx(0.5)
    assert float(per_task["plasticity/actor/dormant_fraction"]) == 0.0


def test_alive_neurons_from_kernel_masks():
    mask = jnp.array([[True, False, False, True],
                      [False, True, False, False],
                      [False, False, False, True]])  # (in=3, out=4); column 2 all masked
    np.testing.assert_array_equal(alive_neurons(mask, 4), [True, True, False, True])
    np.testing.assert_array_equal(alive_neurons(None, 3), [True, True, True])


# ----------------------------------------------------------------------------- effective rank


def known_spectrum_features() -> jax.Array:
    """(8, 5) features U diag(s) V^T with s = [10, 5, 1, 0.01, 0]."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(8, 5)))
    v, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    s = np.array([10.0, 5.0, 1.0, 0.01, 0.0])
    return jnp.asarray(u @ np.diag(s) @ v.T, jnp.float32)


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        # sum sigma = 16.01; cumulative shares: 10/16.01 = 0.6246, 15/16.01 = 0.9369,
        # 16/16.01 = 0.99938, 16.01/16.01 = 1.
        (0.01, 3),  # need >= 0.99: 0.9369 < 0.99 <= 0.99938
        (0.001, 3),  # need >= 0.999: 0.99938 >= 0.999
        (0.0005, 4),  # need >= 0.9995: 0.99938 < 0.9995 <= 1
        (0.1, 2),  # need >= 0.9: 0.6246 < 0.9 <= 0.9369
        (0.4, 1),  # need >= 0.6: 0.6246 >= 0.6
    ],
)
def test_effective_rank_of_a_known_spectrum(delta, expected):
    rank = jax.jit(effective_rank)(known_spectrum_features(), delta)
    assert rank.dtype == jnp.int32
    assert int(rank) == expected


def test_effective_rank_of_zero_features_is_zero():
    assert int(effective_rank(jnp.zeros((6, 4)))) == 0
    assert int(effective_rank(jnp.ones((6, 4)))) == 1  # rank-one features


# ----------------------------------------------------------------------------- Fisher trace


def gaussian_log_prob(params, obs, task_id, action):
    """log N(action; obs @ w + task_bias[task_id], exp(log_std)^2) for one sample."""
    mean = obs @ params["w"] + params["task_bias"][task_id]
    log_std = params["log_std"]
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi))


def test_fisher_trace_by_hand():
    # Only a bias b = 0 and std 1: grad_b log N(a; b, 1) = a - b = a.
    # Squared norms of a = [1, 0], [0, 2], [-1, 0] are 1, 4, 1 -> Tr F = 6 / 3 = 2,
    # while the squared norm of the mean gradient [0, 2/3] is 4/9.
    params = {"b": jnp.zeros(2)}
    log_prob = lambda p, o, t, a: jnp.sum(-0.5 * (a - p["b"]) ** 2 - 0.5 * jnp.log(2 * jnp.pi))
    actions = jnp.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    obs, tasks = jnp.zeros((3, 1)), jnp.zeros(3, jnp.int32)
    np.testing.assert_allclose(
        per_sample_sq_grad_norms(log_prob, params, obs, tasks, actions), [1.0, 4.0, 1.0]
    )
    np.testing.assert_allclose(fisher_trace(log_prob, params, obs, tasks, actions), 2.0,
                               rtol=1e-6)


def test_fisher_trace_matches_a_per_sample_loop():
    k = jax.random.split(jax.random.key(0), 5)
    params = {
        "w": jax.random.normal(k[0], (3, 2)),
        "task_bias": jax.random.normal(k[1], (2, 2)),
        "log_std": jnp.array([-0.3, 0.2]),
        "unused": None,
    }
    obs = jax.random.normal(k[2], (6, 3))
    tasks = jax.random.randint(k[3], (6,), 0, 2)
    actions = jax.random.normal(k[4], (6, 2))

    score = jax.jit(jax.grad(gaussian_log_prob))  # one sample's score, compiled once
    squared_norms, grads = [], []
    for i in range(obs.shape[0]):
        g = score(params, obs[i], tasks[i], actions[i])
        grads.append(g)
        squared_norms.append(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(g)))
    expected = np.mean(squared_norms)

    trace = jax.jit(fisher_trace, static_argnums=0)(gaussian_log_prob, params, obs, tasks,
                                                    actions)
    np.testing.assert_allclose(trace, expected, rtol=1e-5)
    # The squared norm of the mean gradient is a different (smaller) number.
    mean_grad = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
    mean_grad_sq = float(global_norm(mean_grad)) ** 2
    assert mean_grad_sq < 0.8 * expected


def test_tanh_gaussian_log_prob_matches_the_sampler():
    k_mean, k_std, k_sample = jax.random.split(jax.random.key(1), 3)
    mean = jax.random.uniform(k_mean, (16, 3), minval=-0.5, maxval=0.5)
    log_std = jax.random.uniform(k_std, (16, 3), minval=-1.0, maxval=-0.5)
    actions, logp = gaussian_tanh_sample(mean, log_std, k_sample)
    np.testing.assert_allclose(tanh_gaussian_log_prob(mean, log_std, actions), logp,
                               rtol=1e-4, atol=1e-4)
    # The check has teeth: another mean gives another log-prob.
    assert not np.allclose(tanh_gaussian_log_prob(mean + 0.3, log_std, actions), logp, atol=1e-2)


def test_fisher_trace_of_a_masked_gaussian_actor():
    actor = GaussianActor(hidden_sizes=(8,), num_tasks=2, action_dim=2)
    obs = jax.random.normal(jax.random.key(2), (5, 3))
    tasks = jnp.array([0, 1, 0, 1, 1])
    params = jax.jit(actor.init)(jax.random.key(3), obs, tasks)
    masks = jax.tree.map(lambda _: None, params)
    masks["params"]["mlp"]["hidden_0"]["kernel"] = jnp.zeros((5, 8), bool)  # every unit dead
    apply = lambda p, o, t: actor.apply(apply_masks(p, masks), o, t)
    mean, log_std = jax.jit(apply)(params, obs, tasks)
    actions, logp = jax.jit(gaussian_tanh_sample)(mean, log_std, jax.random.key(4))

    log_prob = actor_log_prob_fn(apply)
    one_log_prob = jax.jit(log_prob)
    one_by_one = [one_log_prob(params, obs[i], tasks[i], actions[i]) for i in range(5)]
    np.testing.assert_allclose(one_by_one, logp, rtol=1e-4, atol=1e-4)

    trace = jax.jit(fisher_trace, static_argnums=0)(log_prob, params, obs, tasks, actions)
    assert np.isfinite(trace) and trace > 0
    # With the first layer fully masked, only the head biases receive gradient.
    head_bias_only = lambda b, o, t, a: log_prob(
        {"params": {"mlp": {**params["params"]["mlp"], "heads": {
            "kernel": params["params"]["mlp"]["heads"]["kernel"], "bias": b}}}}, o, t, a)
    expected = jax.jit(fisher_trace, static_argnums=0)(
        head_bias_only, params["params"]["mlp"]["heads"]["bias"], obs, tasks, actions)
    np.testing.assert_allclose(trace, expected, rtol=1e-5)


# ----------------------------------------------------------------------------- norms and masks


def test_global_norm_skips_none_leaves():
    tree = {"params": {"mlp": {
        "hidden_0": {"kernel": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "bias": jnp.array([12.0, 0.0])},
        "heads": {"kernel": jnp.array([[1.0], [0.0]]), "bias": None},
    }}}
    # sqrt(9 + 16 + 144 + 1) = sqrt(170)
    np.testing.assert_allclose(global_norm(tree), np.sqrt(170.0), rtol=1e-6)
    np.testing.assert_allclose(global_norm({"a": None}), 0.0)


def mask_tree(hidden, heads):
    return {"params": {"mlp": {"hidden_0": {"kernel": hidden, "bias": None},
                               "heads": {"kernel": heads, "bias": None}}}}


def test_layer_sparsity_and_mask_change_fraction():
    hidden = jnp.array([[True, False, True, True], [True, True, False, True]])  # 2 of 8 off
    heads = jnp.ones((4, 2), bool)  # 0 of 8 off
    masks = mask_tree(hidden, heads)
    sparsity = layer_sparsity(masks)
    assert set(sparsity) == {"params/mlp/hidden_0/kernel", "params/mlp/heads/kernel"}
    np.testing.assert_allclose(sparsity["params/mlp/hidden_0/kernel"], 0.25, rtol=1e-6)
    np.testing.assert_allclose(sparsity["params/mlp/heads/kernel"], 0.0)

    # Flip 2 entries of hidden_0 and 1 of heads: 3 of 16 maskable entries changed.
    new = mask_tree(hidden.at[0, 0].set(False).at[1, 2].set(True), heads.at[3, 1].set(False))
    np.testing.assert_allclose(jax.jit(mask_change_fraction)(masks, new), 3 / 16, rtol=1e-6)
    np.testing.assert_allclose(mask_change_fraction(masks, masks), 0.0)
    dense = mask_tree(None, None)
    np.testing.assert_allclose(mask_change_fraction(dense, dense), 0.0)
    # A None mask is all True: masking 2 of hidden_0's 8 entries where it had no mask changes 2
    # of the 16 maskable entries.
    half_dense = mask_tree(None, heads)
    np.testing.assert_allclose(mask_change_fraction(half_dense, masks), 2 / 16, rtol=1e-6)
    np.testing.assert_allclose(mask_change_fraction(masks, half_dense), 2 / 16, rtol=1e-6)
    assert layer_sparsity(dense) == {}
