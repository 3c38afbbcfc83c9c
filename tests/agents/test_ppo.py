"""Multi-task PPO: GAE, the loss pieces, per-task heads, the mask invariant through static and
gmp+redo updates, ReDo on convolution channels, update counts, determinism and a bandit."""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtrl_sparse.agents.cnn import PatchConv, max_pool_2x2
from mtrl_sparse.agents.net_state import (
    MethodContext,
    NetState,
    default_maskable,
    masked_params,
)
from mtrl_sparse.agents.networks import check_neuron_layers, torch_linear_init
from mtrl_sparse.agents.optim import NetworkSetup, make_optimizer
from mtrl_sparse.agents.ppo import (
    PPOConfig,
    Rollout,
    categorical_entropy,
    clipped_surrogate,
    gae,
    make_ppo,
    minibatch_indices,
    padded_minibatch_indices,
    policy_loss,
    standardize_per_task,
    updates_per_rollout,
    value_loss,
)
from mtrl_sparse.agents.tree_paths import get_path
from mtrl_sparse.methods.base import NetworkMethodSettings
from mtrl_sparse.methods.gmp import GMPOptions, cubic_sparsity
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.methods.redo import ReDoOptions, dormant_neurons, redo
from mtrl_sparse.methods.registry import MethodOptions
from support.invariants import assert_mask_invariant, assert_trees_equal, trees_equal

NUM_TASKS, NUM_ACTIONS, OBS_SHAPE = 2, 7, (7, 7, 3)
HORIZON, NUM_ENVS = 4, 4  # 16 samples per rollout
# 16 samples: actor 3 epochs x 2 minibatches of 6 (4 samples left out per epoch) = 6 updates;
# critic 2 epochs x 1 minibatch of 16 = 2 updates.
TINY = PPOConfig(actor_lr=3e-3, critic_lr=3e-3, policy_epochs=3, critic_epochs=2,
                 policy_batch_size=6, critic_batch_size=16, rollout_env_steps=HORIZON * NUM_ENVS,
                 conv_channels=(4, 8, 8), head_hidden_dim=8)
ACTOR_UPDATES, CRITIC_UPDATES = 6, 2
TASKS_OF_ENVS = jnp.array([0, 1, 0, 1], jnp.int32)
CONVS = ("conv_0", "conv_1", "conv_2")


# ----------------------------------------------------------------------------- GAE


def reference_gae(rewards, values, terminated, truncated, truncation_values, last_values, gamma,
                  lam):
    """Plain-Python GAE, one env and one step at a time, branching on how each step ended."""
    horizon, num_envs = rewards.shape
    advantages = np.zeros((horizon, num_envs))
    for e in range(num_envs):
        running = 0.0
        for t in reversed(range(horizon)):
            if terminated[t, e]:
                next_value, running = 0.0, 0.0
            elif truncated[t, e]:
                next_value, running = truncation_values[t, e], 0.0
            else:
                next_value = values[t + 1, e] if t + 1 < horizon else last_values[e]
            delta = rewards[t, e] + gamma * next_value - values[t, e]
            running = delta + gamma * lam * running
            advantages[t, e] = running
    return advantages, advantages + values


@pytest.mark.parametrize("seed", range(5))
def test_gae_matches_a_plain_python_loop(seed):
    rng = np.random.default_rng(seed)
    horizon, num_envs = 9, 3
    rewards = rng.normal(size=(horizon, num_envs))
    values = rng.normal(size=(horizon, num_envs))
    terminated = rng.random((horizon, num_envs)) < 0.2
    truncated = rng.random((horizon, num_envs)) < 0.2  # some rows both: termination wins
    truncation_values = np.where(truncated, rng.normal(size=(horizon, num_envs)) * 5, 0.0)
    last_values = rng.normal(size=num_envs)
    args = (rewards, values, terminated, truncated, truncation_values, last_values, 0.9, 0.8)
    advantages, returns = gae(*(jnp.asarray(a, jnp.float32) if isinstance(a, np.ndarray) else a
                                for a in args))
    expected_adv, expected_ret = reference_gae(*args)
    np.testing.assert_allclose(advantages, expected_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, expected_ret, rtol=1e-5, atol=1e-5)


def test_gae_bootstraps_truncation_and_rollout_end_but_not_termination():
    # One env, rewards 1, values 0: truncated at t=1 (V(final obs) = 10), terminated at t=3,
    # the rollout ends at t=4 mid-episode (V = 100).
    g, lam = 0.5, 0.5
    flags = jnp.zeros((5, 1), bool)
    advantages, _ = gae(jnp.ones((5, 1)), jnp.zeros((5, 1)), flags.at[3, 0].set(True),
                        flags.at[1, 0].set(True), jnp.zeros((5, 1)).at[1, 0].set(10.0),
                        jnp.array([100.0]), g, lam)
    a4 = 1 + g * 100
    a3 = 1.0
    a2 = 1 + g * lam * a3  # values are 0, so delta_2 = 1
    a1 = 1 + g * 10  # the trace stops at the truncation
    a0 = 1 + g * lam * a1
    np.testing.assert_allclose(advantages[:, 0], [a0, a1, a2, a3, a4], rtol=1e-6)


# ----------------------------------------------------------------------------- losses


def test_clipped_surrogate_against_hand_computed_values():
    old = jnp.log(jnp.array([0.5, 0.5, 0.5, 0.5]))
    new = jnp.log(jnp.array([0.75, 0.75, 0.25, 0.25]))  # ratios 1.5, 1.5, 0.5, 0.5
    advantages = jnp.array([2.0, -2.0, 1.0, -1.0])
    # min(r A, clip(r, 0.8, 1.2) A): 1.5*2 vs 1.2*2; -3 vs -2.4; 0.5 vs 0.8; -0.5 vs -0.8.
    np.testing.assert_allclose(clipped_surrogate(new, old, advantages, 0.2),
                               [2.4, -3.0, 0.5, -0.8], rtol=1e-6)


def test_entropy_and_policy_loss_against_hand_computed_values():
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]))
    entropy = np.array([-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)), np.log(3.0)])
    np.testing.assert_allclose(categorical_entropy(logits), entropy, rtol=1e-6)

    actions = jnp.array([0, 2])
    old = jnp.log(jnp.array([0.25, 1 / 3]))  # ratios 2.0 and 1.0
    advantages = jnp.array([1.0, 3.0])
    loss, info = policy_loss(logits, actions, old, advantages, 0.2, 0.1, normalize=False)
    surrogate = np.mean([1.2 * 1.0, 1.0 * 3.0])
    np.testing.assert_allclose(loss, -surrogate - 0.1 * entropy.mean(), rtol=1e-6)
    np.testing.assert_allclose(info["clip_fraction"], 0.5)
    np.testing.assert_allclose(info["approx_kl"], np.mean([(2.0 - 1) - np.log(2.0), 0.0]),
                               rtol=1e-6)
    # Normalised advantages of two samples are -1 and +1: sample 0's ratio 2 is not clipped
    # below (min(2 * -1, 1.2 * -1) = -2), sample 1's ratio 1 gives 1.
    loss, _ = policy_loss(logits, actions, old, advantages, 0.2, 0.0, normalize=True)
    np.testing.assert_allclose(loss, -np.mean([-2.0, 1.0]), rtol=1e-5)


def test_each_epoch_is_a_permutation_cut_into_full_minibatches():
    indices = np.asarray(minibatch_indices(jax.random.PRNGKey(0), 16, 6, epochs=3))
    assert indices.shape == (6, 6)
    for epoch in indices.reshape(3, 12):
        assert len(set(epoch.tolist())) == 12  # no sample twice in an epoch; 4 left out
        assert epoch.min() >= 0 and epoch.max() < 16
    assert not np.array_equal(indices[:2], indices[2:4])  # a fresh shuffle every epoch
    assert updates_per_rollout(TINY) == {"actor": ACTOR_UPDATES, "critic": CRITIC_UPDATES}
    with pytest.raises(ValueError, match="does not fit"):
        minibatch_indices(jax.random.PRNGKey(0), 16, 17, epochs=1)


def test_kept_partial_minibatches_use_every_sample_once_per_epoch():
    """16 samples in minibatches of 6: 3 per epoch, the third holding 4 samples and 2 padding
    entries of weight 0; the weighted entries of an epoch are a permutation of the samples."""
    indices, weights = (np.asarray(a) for a in
                        padded_minibatch_indices(jax.random.PRNGKey(0), 16, 6, epochs=3))
    assert indices.shape == weights.shape == (9, 6)
    for epoch, weight in zip(indices.reshape(3, 18), weights.reshape(3, 18), strict=True):
        assert sorted(epoch[weight == 1].tolist()) == list(range(16))
        np.testing.assert_array_equal(weight, [1] * 16 + [0] * 2)
    assert updates_per_rollout(dataclasses.replace(TINY, keep_partial_minibatch=True)) == {
        "actor": 3 * 3, "critic": CRITIC_UPDATES}
    assert updates_per_rollout(dataclasses.replace(PPOConfig(), keep_partial_minibatch=True)) == {
        "actor": 8 * 8, "critic": 1}


def test_padding_entries_of_weight_zero_change_no_loss_and_get_no_gradient():
    """The weighted losses on a padded minibatch equal the plain losses on its real samples
    (advantage standardisation included), and the padded rows' logits get zero gradient."""
    keys = jax.random.split(jax.random.PRNGKey(3), 5)
    logits = jax.random.normal(keys[0], (6, NUM_ACTIONS))
    actions = jax.random.randint(keys[1], (6,), 0, NUM_ACTIONS)
    old = jax.random.normal(keys[2], (6,)) - 2.0
    advantages = jax.random.normal(keys[3], (6,))
    values, returns = jax.random.normal(keys[4], (2, 6))
    weight = jnp.array([1.0, 1, 1, 1, 0, 0])

    def padded(logits):
        return policy_loss(logits, actions, old, advantages, 0.2, 0.01, True, weight)

    loss, info = padded(logits)
    want, want_info = policy_loss(logits[:4], actions[:4], old[:4], advantages[:4], 0.2, 0.01,
                                  True)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    for name in ("entropy", "approx_kl", "clip_fraction"):
        np.testing.assert_allclose(info[name], want_info[name], rtol=1e-5)
    grads = jax.grad(lambda x: padded(x)[0])(logits)
    assert np.all(np.asarray(grads[4:]) == 0) and np.any(np.asarray(grads[:4]) != 0)
    np.testing.assert_allclose(value_loss(values, returns, weight),
                               value_loss(values[:4], returns[:4]), rtol=1e-6)


def test_defaults_are_table_2_and_give_56_actor_and_1_critic_update_per_rollout():
    c = PPOConfig()
    assert (c.actor_lr, c.critic_lr, c.gae_lambda, c.gamma, c.entropy_coef, c.clip_eps) == (
        1e-3, 1e-3, 0.95, 0.99, 0.01, 0.2)
    assert (c.policy_epochs, c.critic_epochs, c.policy_batch_size, c.critic_batch_size) == (
        8, 1, 256, 2000)
    assert (c.rollout_env_steps, c.conv_channels, c.head_hidden_dim) == (2000, (16, 32, 64), 128)
    assert updates_per_rollout(c) == {"actor": 8 * 7, "critic": 1}


# ----------------------------------------------------------------------------- agents


def gmp_redo_options() -> MethodOptions:
    """GMP pruning and ReDo recycling at every update from the first (tau high enough that
    neurons are recycled)."""
    return dataclasses.replace(
        MethodOptions(),
        gmp=dataclasses.replace(GMPOptions(), start_fraction=0.0, prune_every_updates=1),
        redo=dataclasses.replace(ReDoOptions(), every_updates=1, tau=0.5),
    )


def setups(method: str) -> tuple[NetworkSetup, NetworkSetup]:
    """(actor, critic) setups at sparsity 0.7; total updates as for a run of 2 rollouts."""
    return tuple(
        build_network(NetworkMethodSettings(method, 0.7, "erk", total_updates=2 * n),
                      gmp_redo_options())
        for n in (ACTOR_UPDATES, CRITIC_UPDATES)
    )


@functools.cache
def tiny_agent(method: str):
    """(ppo, jitted init, jitted act, jitted update) of a tiny PPO whose networks run
    ``method``."""
    ppo = make_ppo(TINY, NUM_TASKS, OBS_SHAPE, NUM_ACTIONS, *setups(method))
    return (ppo, jax.jit(ppo.init), jax.jit(ppo.act, static_argnames="deterministic"),
            jax.jit(ppo.update))


def random_obs(key, *batch) -> jax.Array:
    """Raw MiniGrid-like images: integers in [0, 10]."""
    return jax.random.randint(key, (*batch, *OBS_SHAPE), 0, 11).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnums=0)
def random_rollout(method: str, state, key) -> Rollout:
    """A rollout collected by the agent's own policy, with rewards and episode ends at random."""
    _, _, act, _ = tiny_agent(method)
    k_obs, k_act, k_rew, k_term, k_trunc, k_val = jax.random.split(key, 6)
    obs = random_obs(k_obs, HORIZON, NUM_ENVS)
    task_ids = jnp.broadcast_to(TASKS_OF_ENVS, (HORIZON, NUM_ENVS))
    actions, log_probs, values = act(state, obs.reshape(-1, *OBS_SHAPE), task_ids.reshape(-1),
                                     k_act)
    shape = (HORIZON, NUM_ENVS)
    truncated = jax.random.bernoulli(k_trunc, 0.2, shape)
    return Rollout(
        obs=obs, task_ids=task_ids, actions=actions.reshape(shape),
        log_probs=log_probs.reshape(shape), values=values.reshape(shape),
        rewards=jax.random.uniform(k_rew, shape),
        terminated=jax.random.bernoulli(k_term, 0.2, shape), truncated=truncated,
        truncation_values=jnp.where(truncated, jax.random.normal(k_val, shape), 0.0),
        last_values=jnp.zeros(NUM_ENVS))


def test_act_shapes_log_probs_values_and_greedy_actions():
    ppo, init, act, _ = tiny_agent("static")
    state = init(jax.random.PRNGKey(0))
    obs, task_ids = random_obs(jax.random.PRNGKey(1), 8), jnp.arange(8) % NUM_TASKS
    actions, log_probs, values = act(state, obs, task_ids, jax.random.PRNGKey(2))
    assert actions.shape == log_probs.shape == values.shape == (8,)
    assert actions.dtype == jnp.int32 and np.all((actions >= 0) & (actions < NUM_ACTIONS))
    logits = jax.jit(ppo.actor_logits)(masked_params(state.actor), obs, task_ids)
    assert logits.shape == (8, NUM_ACTIONS)
    np.testing.assert_allclose(log_probs, jax.nn.log_softmax(logits)[jnp.arange(8), actions],
                               rtol=1e-5)
    np.testing.assert_allclose(values, jax.jit(ppo.value)(state, obs, task_ids), rtol=1e-6)
    greedy, _, _ = act(state, obs, task_ids, jax.random.PRNGKey(2), deterministic=True)
    np.testing.assert_array_equal(greedy, jnp.argmax(logits, axis=-1))


def shift_task_head(params, task: int, units: int, amount: float):
    """``params`` with every parameter of one task's two head layers shifted by ``amount``."""
    heads = params["params"]["task_heads"]
    rows = slice(task * units, (task + 1) * units)
    hidden, out = heads["head_hidden"], heads["heads"]
    new_heads = {
        "head_hidden": {"kernel": hidden["kernel"].at[..., rows].add(amount),
                        "bias": hidden["bias"].at[rows].add(amount)},
        "heads": {"kernel": out["kernel"].at[rows].add(amount),
                  "bias": out["bias"].at[task].add(amount)},
    }
    return {"params": {**params["params"], "task_heads": new_heads}}


@pytest.mark.parametrize("network", ["actor", "critic"])
def test_the_task_id_acts_only_through_its_own_head(network):
    ppo, init, _, _ = tiny_agent("static")
    state = init(jax.random.PRNGKey(3))
    apply = jax.jit(ppo.actor_logits if network == "actor" else ppo.critic_values)
    activations = jax.jit(ppo.actor_activations if network == "actor" else ppo.critic_activations)
    weights = masked_params(getattr(state, network))
    obs = random_obs(jax.random.PRNGKey(4), 3)
    as_task = [jnp.full((3,), t, jnp.int32) for t in range(NUM_TASKS)]
    # The trunk does not see the task; the outputs of different heads differ.
    trunk = [activations(weights, obs, t)["trunk"] for t in as_task]
    assert_trees_equal(*trunk)
    outputs = [apply(weights, obs, t) for t in as_task]
    assert not np.allclose(outputs[0], outputs[1])
    # Changing task 1's head changes task 1's outputs only.
    shifted = shift_task_head(weights, 1, TINY.head_hidden_dim, 0.3)
    np.testing.assert_array_equal(apply(shifted, obs, as_task[0]), outputs[0])
    assert not np.allclose(apply(shifted, obs, as_task[1]), outputs[1])


def conv_kernels(net: NetState, tree: str = "masks") -> dict:
    return {c: getattr(net, tree)["params"]["trunk"][c]["kernel"] for c in CONVS}


def test_static_update_keeps_the_mask_invariant_with_sparse_conv_kernels():
    _, init, _, update = tiny_agent("static")
    state = init(jax.random.PRNGKey(5))
    masks_before = (state.actor.masks, state.critic.masks)
    for net in (state.actor, state.critic):
        # ERK leaves the smallest kernels dense; the widest convolution is sparse.
        assert not np.all(np.asarray(conv_kernels(net)["conv_2"]))
    for i in range(2):
        state, metrics = update(state, random_rollout("static", state, jax.random.PRNGKey(6 + i)),
                                jax.random.PRNGKey(i))
        for net in (state.actor, state.critic):
            assert_mask_invariant(net, sparse=True)
        assert all(np.all(np.isfinite(np.asarray(v))) for v in metrics.values())
    assert_trees_equal(masks_before, (state.actor.masks, state.critic.masks))
    for network in ("actor", "critic"):
        assert float(metrics[f"{network}_sparsity"]) == pytest.approx(0.7, abs=0.01)
        conv_2 = conv_kernels(getattr(state, network), "params")["conv_2"]
        assert np.any(np.asarray(conv_2) != 0)  # trained, yet zero wherever masked (invariant)


def test_gmp_redo_update_prunes_convolutions_and_recycles_neurons():
    _, init, _, update = tiny_agent("gmp+redo")
    state = init(jax.random.PRNGKey(7))
    assert float(jnp.sum(state.actor.params["params"]["trunk"]["conv_2"]["kernel"] == 0)) == 0
    for i in range(2):
        state, metrics = update(state, random_rollout("gmp+redo", state, jax.random.PRNGKey(8 + i)),
                                jax.random.PRNGKey(i))
        for net in (state.actor, state.critic):
            assert_mask_invariant(net)
        assert all(np.all(np.isfinite(np.asarray(v))) for v in metrics.values())
    for network in ("actor", "critic"):
        net = getattr(state, network)
        # Two rollouts are the whole run: GMP has reached its final sparsity.
        assert float(metrics[f"{network}_sparsity"]) == pytest.approx(0.7, abs=0.01)
        assert not np.all(np.asarray(conv_kernels(net)["conv_1"]))
        assert int(net.method_state["redo"]["recycled_total"]) > 0


def test_update_counts_one_step_per_minibatch_and_passes_it_to_the_method():
    """GMP prunes at every update from the first: its event count and scheduled sparsity show
    which update counts each network's transform was called with."""
    _, init, _, update = tiny_agent("gmp+redo")
    state = init(jax.random.PRNGKey(9))
    for rollouts in (1, 2):
        state, _ = update(state, random_rollout("gmp+redo", state, jax.random.PRNGKey(10)),
                          jax.random.PRNGKey(rollouts))
        counts = {"actor": int(state.actor_step), "critic": int(state.critic_step)}
        assert counts == {"actor": rollouts * TINY.policy_epochs * (16 // 6),
                          "critic": rollouts * TINY.critic_epochs * (16 // 16)}
        for network, n in counts.items():
            t_end = 0.8 * 2 * updates_per_rollout(TINY)[network]
            last_event = min(n, math.ceil(t_end))  # GMP's events stop once s_f is reached
            gmp_state = getattr(state, network).method_state["gmp"]
            # transform called with the counts 1, 2, ..., n
            assert int(gmp_state["events"]) == last_event
            np.testing.assert_allclose(gmp_state["scheduled_sparsity"],
                                       cubic_sparsity(last_event, 0.7, 0.0, t_end), rtol=1e-6)


def test_update_is_deterministic_given_its_key():
    _, init, _, update = tiny_agent("static")
    state = init(jax.random.PRNGKey(14))
    rollout = random_rollout("static", state, jax.random.PRNGKey(15))
    first, second = (update(state, rollout, jax.random.PRNGKey(16))[0] for _ in range(2))
    assert_trees_equal(first, second)
    other = update(state, rollout, jax.random.PRNGKey(17))[0]  # other minibatches
    assert not trees_equal(first.actor.params, other.actor.params)


def test_a_rollout_of_the_wrong_size_is_refused():
    _, init, _, update = tiny_agent("static")
    state = init(jax.random.PRNGKey(18))
    rollout = random_rollout("static", state, jax.random.PRNGKey(19))
    half = jax.tree.map(lambda x: x[:2] if x.ndim > 1 else x, rollout)
    with pytest.raises(ValueError, match="8 env steps"):
        update(state, half, jax.random.PRNGKey(0))


def test_ppo_learns_a_contextual_bandit_through_its_task_heads():
    """One-step episodes; task 0 pays 1 for action 2, task 1 for action 5 (a 70% sparse agent,
    25 updates of 6 actor steps)."""
    ppo, init, act, update = tiny_agent("static")
    state = init(jax.random.PRNGKey(20))
    best = jnp.array([2, 5])
    task_ids = jnp.broadcast_to(TASKS_OF_ENVS, (HORIZON, NUM_ENVS))

    @jax.jit
    def probability_of_best(state):
        """Per task, the mean probability of the action that task pays for, (T,)."""
        obs = random_obs(jax.random.PRNGKey(99), 64)
        tasks = jnp.arange(64) % NUM_TASKS
        logits = ppo.actor_logits(masked_params(state.actor), obs, tasks)
        p = jax.nn.softmax(logits)[jnp.arange(64), best[tasks]]
        return jnp.stack([jnp.mean(p, where=tasks == t) for t in range(NUM_TASKS)])

    before = np.asarray(probability_of_best(state))
    for i in range(25):
        k_obs, k_act, k_update = jax.random.split(jax.random.PRNGKey(100 + i), 3)
        obs = random_obs(k_obs, HORIZON, NUM_ENVS)
        actions, log_probs, values = act(state, obs.reshape(-1, *OBS_SHAPE),
                                         task_ids.reshape(-1), k_act)
        shape = (HORIZON, NUM_ENVS)
        actions = actions.reshape(shape)
        rollout = Rollout(
            obs=obs, task_ids=task_ids, actions=actions, log_probs=log_probs.reshape(shape),
            values=values.reshape(shape), rewards=(actions == best[task_ids]).astype(jnp.float32),
            terminated=jnp.ones(shape, bool), truncated=jnp.zeros(shape, bool),
            truncation_values=jnp.zeros(shape), last_values=jnp.zeros(NUM_ENVS))
        state, _ = update(state, rollout, k_update)
    after = np.asarray(probability_of_best(state))
    # From about uniform (1/7) to a clear preference, in each task for its own action.
    assert np.all(before < 0.2) and np.all(after > 0.4), (before, after)


# ----------------------------------------------------------------------------- ReDo on the CNN


def test_a_head_reading_a_flattened_map_is_refused_as_a_neuron_layer():
    """Flatten + Dense on a 4x4x8 map gives 128 kernel rows for 8 channels: zeroing rows
    ``[i, :]`` would hit the wrong weights, so the check must refuse it."""
    ppo = make_ppo(dataclasses.replace(TINY, cnn_pooling=False), NUM_TASKS, OBS_SHAPE,
                   NUM_ACTIONS, *setups("static"))
    shapes = jax.eval_shape(ppo.init_params["actor"], jax.random.PRNGKey(0))
    check_neuron_layers(shapes, ppo.neuron_layers["actor"])  # the (4, 4, 8, T * U) kernel
    hidden = shapes["params"]["task_heads"]["head_hidden"]
    flat = jax.ShapeDtypeStruct((4 * 4 * 8, hidden["kernel"].shape[-1]), jnp.float32)
    shapes["params"]["task_heads"]["head_hidden"] = {**hidden, "kernel": flat}
    with pytest.raises(ValueError, match="axis -2"):
        check_neuron_layers(shapes, ppo.neuron_layers["actor"])


@pytest.mark.parametrize("pooling", [True, False])
def test_redo_recycles_conv_channels_and_head_units_at_the_right_positions(pooling):
    """Dormant neuron i: incoming kernel[..., i] and bias[i] from the fresh init (times the
    mask), outgoing kernel[..., i, :] zero except where the next layer's neuron is itself
    recycled; everything else unchanged. Without pooling the last conv map is 4x4, and its
    channels must still be the rows the head reads."""
    method = redo(NetworkMethodSettings("redo", 0.0), ReDoOptions(every_updates=1, tau=0.99))
    setup = NetworkSetup(method)
    ppo = make_ppo(dataclasses.replace(TINY, cnn_pooling=pooling), NUM_TASKS, OBS_SHAPE,
                   NUM_ACTIONS, setup, setup)
    layers = ppo.neuron_layers["actor"]
    tx = make_optimizer(1e-3, 0.5, setup)
    # Weights and masks drawn in numpy from the network's shapes: no initialiser to compile.
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(ppo.init_params["actor"], jax.random.PRNGKey(0))

    def draw(x):  # scaled so that the tanh layers do not saturate on raw images
        return rng.normal(scale=0.1, size=x.shape).astype(np.float32)

    fresh = jax.tree.map(draw, shapes)
    masks = jax.tree.map(lambda x, maskable: rng.random(x.shape) < 0.7 if maskable else None,
                         shapes, default_maskable(shapes))
    params = jax.tree.map(lambda x, m: draw(x) * (1 if m is None else m), shapes, masks,
                          is_leaf=lambda x: x is None)
    obs = random_obs(jax.random.PRNGKey(24), 32)
    tasks = jnp.arange(32) % NUM_TASKS

    @jax.jit
    def recycle(params, masks, fresh):
        net = NetState(params, masks, tx.init(params), method.init(params, None, None)[1])
        context = MethodContext(activations=lambda w: ppo.actor_activations(w, obs, tasks),
                                init_params=lambda key: fresh, neuron_layers=tuple(layers),
                                optimizer=tx)
        after = method.transform(net, jnp.array(1), jax.random.PRNGKey(0), context)
        dormant, _ = dormant_neurons(context.activations(params), masks, layers, 0.99)
        return after, dormant

    after, dormant = recycle(params, masks, fresh)
    counts = [int(jnp.sum(d)) for d in dormant]
    assert all(0 < c < d.size for c, d in zip(counts, dormant, strict=True)), counts

    expected = jax.tree.map(np.array, params)
    for layer, d in zip(layers, dormant, strict=True):
        d = np.asarray(d)
        out = get_path(expected, (*layer.outgoing, "kernel"))
        out[..., d, :] = 0.0  # the next iteration re-initialises the next layer's columns
        kernel = get_path(expected, (*layer.incoming, "kernel"))
        fresh_kernel = np.asarray(get_path(fresh, (*layer.incoming, "kernel")))
        mask = np.asarray(get_path(masks, (*layer.incoming, "kernel")))
        kernel[..., d] = (fresh_kernel * mask)[..., d]
        bias = get_path(expected, (*layer.incoming, "bias"))
        bias[d] = np.asarray(get_path(fresh, (*layer.incoming, "bias")))[d]
    assert_trees_equal(after.params, expected)
    assert int(after.method_state["recycled_last"]) == sum(int(jnp.sum(d)) for d in dormant)


@pytest.mark.parametrize(("size", "shape"), [(2, (3, 7, 7, 3)), (3, (2, 6, 5, 4))])
def test_patch_conv_is_flax_conv_with_the_same_parameters(size, shape):
    image = jax.random.normal(jax.random.PRNGKey(1), shape)
    conv = nn.Conv(5, (size, size), padding="VALID", kernel_init=torch_linear_init)
    patch = PatchConv(5, size)
    variables = conv.init(jax.random.PRNGKey(0), image)
    assert jax.tree.map(jnp.shape, patch.init(jax.random.PRNGKey(0), image)) == jax.tree.map(
        jnp.shape, variables)
    variables = jax.tree.map(lambda x: x + jax.random.normal(jax.random.PRNGKey(2), x.shape),
                             variables)  # a nonzero bias too
    np.testing.assert_allclose(patch.apply(variables, image), conv.apply(variables, image),
                               rtol=1e-5, atol=1e-5)


def test_max_pool_2x2_is_flax_max_pool():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 3))
    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


# ----------------------------------------------------------------------------- lineage options
# MOORE's MiniGrid PPO (the paper's lineage): advantages standardised per task over the rollout,
# no gradient clipping.


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(-100, 100)), min_size=1, max_size=40))
def test_per_task_standardisation_gives_each_task_mean_0_and_std_1(pairs):
    task_ids = jnp.array([t for t, _ in pairs], jnp.int32)
    x = jnp.array([v for _, v in pairs], jnp.float32)
    z = np.asarray(standardize_per_task(x, task_ids, 4))
    assert np.all(np.isfinite(z))
    for task in set(np.asarray(task_ids).tolist()):
        values, own = np.asarray(x)[np.asarray(task_ids) == task], z[np.asarray(task_ids) == task]
        np.testing.assert_allclose(own.mean(), 0.0, atol=1e-4)
        if values.std() > 1e-2:
            np.testing.assert_allclose(own.std(), 1.0, rtol=1e-3)


def test_no_clipping_is_plain_adam():
    grads = {"w": jnp.full((3,), 100.0)}
    params = {"w": jnp.zeros(3)}
    unclipped = make_optimizer(1e-3, None, NetworkSetup(method=None))
    adam = optax.adam(1e-3, eps=1e-8)
    ours, _ = unclipped.update(grads, unclipped.init(params), params)
    plain, _ = adam.update(grads, adam.init(params), params)
    np.testing.assert_allclose(ours["w"], plain["w"], rtol=1e-6)
    clipped = make_optimizer(1e-3, 0.5, NetworkSetup(method=None))
    _, state = clipped.update(grads, clipped.init(params), params)
    assert len(state) == len(unclipped.init(params)) + 1  # the clip's own (empty) state


def test_per_task_advantages_and_no_clipping_change_the_update():
    """The lineage options run through a whole update and change its result."""
    default = make_ppo(TINY, NUM_TASKS, OBS_SHAPE, NUM_ACTIONS, *setups("dense"))
    lineage = make_ppo(dataclasses.replace(TINY, advantage_normalization="task",
                                           max_grad_norm=None),
                       NUM_TASKS, OBS_SHAPE, NUM_ACTIONS, *setups("dense"))
    state = jax.jit(default.init)(jax.random.PRNGKey(0))
    lineage_state = jax.jit(lineage.init)(jax.random.PRNGKey(0))  # no clip state in its optimizer
    assert_trees_equal(state.actor.params, lineage_state.actor.params)
    rollout = random_rollout("dense", state, jax.random.PRNGKey(1))
    a, _ = jax.jit(default.update)(state, rollout, jax.random.PRNGKey(2))
    b, metrics = jax.jit(lineage.update)(lineage_state, rollout, jax.random.PRNGKey(2))
    assert all(np.isfinite(float(v)) for v in jax.tree.leaves(metrics) if jnp.ndim(v) == 0)
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))),
                                         a.actor.params, b.actor.params))
    assert max(diffs) > 0.0
