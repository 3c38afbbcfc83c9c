"""ibm (mtrl_sparse.methods.ibm): gated weights under an information-bottleneck penalty; at a
task boundary the ended task's sub-network is frozen, and each task acts with its own view, so
training a later task leaves an earlier task's outputs unchanged."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrl_sparse.agents.cnn import stacked_head_layers as cnn_head_layers
from mtrl_sparse.agents.net_state import (
    MethodContext,
    NetState,
    create_net_state,
    masked_params,
    training_weights,
)
from mtrl_sparse.agents.networks import MultiHeadMLP, stacked_head_layers
from mtrl_sparse.agents.optim import make_optimizer, masked_gradient_step
from mtrl_sparse.agents.ppo import PPOConfig, make_ppo
from mtrl_sparse.methods.base import MethodError, NetworkMethodSettings
from mtrl_sparse.methods.ibm import IBMOptions, kl_gradients, kl_penalty, task_index
from mtrl_sparse.methods.network import build_network, check_network
from mtrl_sparse.methods.registry import method_options_class
from support.invariants import assert_mask_invariant

NUM_TASKS, IN_DIM, OUT_DIM, BATCH = 3, 6, 2, 32
NET = MultiHeadMLP((32, 32), NUM_TASKS, OUT_DIM)


def settings(name: str = "ibm", sparsity: float = 0.0, phases: int = NUM_TASKS):
    return NetworkMethodSettings(name, sparsity, total_updates=300, phases=phases,
                                 layer_slices=stacked_head_layers(NUM_TASKS))


def options_with(ibm: IBMOptions):
    return method_options_class()(ibm=ibm)


@functools.cache
def programs(name: str = "ibm", sparsity: float = 0.0, kl_weight: float = 1e-3):
    """Jitted ``new_state(key)``, ``step(state, update, phase, key)`` (one regression step on
    the phase's task through ``masked_gradient_step``) and ``views(state)``."""
    options = options_with(IBMOptions(kl_weight=kl_weight))
    setup = build_network(settings(name, sparsity), options)
    tx = make_optimizer(1e-2, None, setup)
    targets = jax.random.normal(jax.random.PRNGKey(99), (NUM_TASKS, IN_DIM, OUT_DIM))

    def new_state(key: jax.Array) -> NetState:
        params = NET.init(key, jnp.zeros((1, IN_DIM)), jnp.zeros((1,), jnp.int32))
        return create_net_state(params, tx, setup.method, key,
                                reparameterize=setup.reparameterize,
                                noisy_scales=setup.noisy_scales)

    def step(state: NetState, update: jax.Array, phase: jax.Array, key: jax.Array) -> NetState:
        x = jax.random.normal(key, (BATCH, IN_DIM))
        tasks = jnp.full((BATCH,), phase, jnp.int32)
        y = x @ targets[phase]

        def loss(weights):
            return jnp.mean(jnp.square(NET.apply(weights, x, tasks) - y)), None

        context = MethodContext(phase=phase, batch={"obs": x, "task_ids": tasks})
        state, _, _ = masked_gradient_step(state, loss, tx, setup.method, update,
                                           jax.random.fold_in(key, 1), context)
        return state

    def views(state: NetState) -> jax.Array:
        return setup.task_weights(state, NUM_TASKS)

    return jax.jit(new_state), jax.jit(step), jax.jit(views), setup


def outputs(weights, task: int) -> np.ndarray:
    x = jax.random.normal(jax.random.PRNGKey(123), (16, IN_DIM))
    return np.asarray(NET.apply(weights, x, jnp.full((16,), task, jnp.int32)))


def view_of(views, task: int):
    return jax.tree.map(lambda w: w[task], views)


def train(state, step, phase: int, updates: range):
    for u in updates:
        state = step(state, jnp.int32(u), jnp.int32(phase), jax.random.PRNGKey(u))
    return state


def test_training_task_two_leaves_task_one_outputs_unchanged():
    new_state, step, views, _ = programs()
    state = train(new_state(jax.random.PRNGKey(0)), step, 0, range(1, 101))
    # The first update of task 1 consolidates task 0 (and is undone on what task 0 keeps).
    consolidated = train(state, step, 1, range(101, 102))
    assert int(consolidated.method_state["ibm"]["consolidations"]) == 1
    before = outputs(view_of(views(consolidated), 0), 0)
    trained = train(consolidated, step, 1, range(102, 202))
    np.testing.assert_array_equal(outputs(view_of(views(trained), 0), 0), before)
    # Task 1 did train: its own view's outputs moved.
    assert not np.allclose(outputs(view_of(views(trained), 1), 1),
                           outputs(view_of(views(consolidated), 1), 1))
    # Frozen entries are bit-identical; free ones trained.
    owner = trained.method_state["ibm"]["owner"]
    for p_before, p_after, o in zip(jax.tree.leaves(consolidated.params),
                                    jax.tree.leaves(trained.params), jax.tree.leaves(owner),
                                    strict=True):
        frozen = np.asarray(o) >= 0
        np.testing.assert_array_equal(np.asarray(p_after)[frozen], np.asarray(p_before)[frozen])
    hidden = np.asarray(owner["params"]["hidden_0"]["kernel"])
    assert 0 < (hidden == 0).sum() < hidden.size, "task 0 froze none or all of the trunk"
    # Without isolation the whole network's task-0 outputs did change.
    assert not np.allclose(outputs(masked_params(trained), 0),
                           outputs(masked_params(consolidated), 0))


def test_consolidation_keeps_other_tasks_head_slices_free():
    new_state, step, _, _ = programs()
    state = train(new_state(jax.random.PRNGKey(1)), step, 0, range(1, 41))
    state = train(state, step, 1, range(41, 42))
    owner = state.method_state["ibm"]["owner"]["params"]["heads"]
    for leaf in ("kernel", "bias"):
        per_task = np.asarray(owner[leaf]).reshape(*owner[leaf].shape[:-1], NUM_TASKS, OUT_DIM)
        assert np.all(per_task[..., 1:, :] == -1), leaf  # tasks 1, 2: free
    assert np.all(np.asarray(owner["bias"]).reshape(NUM_TASKS, OUT_DIM)[0] == 0)
    assert np.all(np.asarray(state.method_state["ibm"]["owner"]["params"]["hidden_0"]["bias"])
                  == 0)  # shared biases freeze at the first boundary


def test_the_penalty_prunes_gates_and_the_forward_pass_is_noisy():
    new_state, step, views, _ = programs(kl_weight=10.0)
    state = train(new_state(jax.random.PRNGKey(2)), step, 0, range(1, 201))
    kept = float(state.method_state["ibm"]["kept_fraction"])
    assert kept < 0.9, kept
    noise = [np.asarray(n) for n in jax.tree.leaves(state.scale_noise)]
    assert any(np.any(n != 0) for n in noise)
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(training_weights(state)), jax.tree.leaves(masked_params(state)),
        strict=True))
    # Before any boundary every task's view is the whole (deterministic) network.
    for t in range(NUM_TASKS):
        np.testing.assert_array_equal(outputs(view_of(views(state), t), t),
                                      outputs(masked_params(state), t))


def test_kl_gradients_match_autodiff():
    mu = jnp.array([1.0, -0.3, 0.02, 2.0])
    log_var = jnp.array([-9.0, -1.0, 0.5, -4.0])
    auto_mu, auto_log_var = jax.grad(kl_penalty, argnums=(0, 1))(mu, log_var)
    ours_mu, ours_log_var = kl_gradients(mu, log_var)
    np.testing.assert_allclose(ours_mu, auto_mu, rtol=1e-5)
    np.testing.assert_allclose(ours_log_var, auto_log_var, rtol=1e-4, atol=1e-12)


def test_mask_invariant_with_static_masks():
    new_state, step, _, _ = programs("static+ibm", 0.8)
    state = new_state(jax.random.PRNGKey(3))
    for phase, updates in ((0, range(1, 21)), (1, range(21, 41))):
        for u in updates:
            state = step(state, jnp.int32(u), jnp.int32(phase), jax.random.PRNGKey(u))
            assert_mask_invariant(state, sparse=True)


def test_task_index_marks_each_head_slice():
    params = NET.init(jax.random.PRNGKey(0), jnp.zeros((1, IN_DIM)), jnp.zeros((1,), jnp.int32))
    tasks = task_index(params, stacked_head_layers(NUM_TASKS))["params"]
    np.testing.assert_array_equal(np.asarray(tasks["heads"]["bias"]),
                                  np.repeat(np.arange(NUM_TASKS), OUT_DIM))
    assert np.all(np.asarray(tasks["hidden_1"]["kernel"]) == -1)


@pytest.mark.parametrize("name", ["ibm+sign_in", "ibm+sparse_tune"])
def test_refuses_compositions_that_clash(name):
    with pytest.raises(MethodError, match="ibm on the actor cannot be combined"):
        check_network(settings(name), network="actor")


def test_multi_task_runs_act_with_the_whole_network():
    assert build_network(settings(phases=1)).task_weights is None
    assert build_network(settings()).task_weights is not None


def test_ppo_acts_with_each_samples_own_task_view():
    """A PPO actor under sequential IBM: each sample's log-probabilities are those of its own
    task's view (here task 0 owns a part of the network, task 1 is being trained)."""
    tasks = 2
    config = PPOConfig(rollout_env_steps=8, policy_batch_size=4, critic_batch_size=8,
                       conv_channels=(4, 8, 8), head_hidden_dim=8)
    setup = build_network(NetworkMethodSettings("ibm", 0.0, total_updates=100, phases=tasks,
                                                layer_slices=cnn_head_layers(tasks)))
    ppo = make_ppo(config, tasks, (7, 7, 3), 7, setup, setup)
    state = ppo.init(jax.random.PRNGKey(0))
    # Task 0 owns a random half of every gated leaf; the schedule is in phase 1.
    ibm_state = state.actor.method_state["ibm"]
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 64))
    owner = jax.tree.map(lambda o: jnp.where(jax.random.bernoulli(next(keys), 0.5, o.shape),
                                             0, o), ibm_state["owner"])
    actor = state.actor.replace(method_state={"ibm": {**ibm_state, "owner": owner,
                                                      "phase": jnp.int32(1)}})
    state = state.replace(actor=actor)
    obs = jax.random.randint(jax.random.PRNGKey(2), (6, 7, 7, 3), 0, 6).astype(jnp.float32)
    task_ids = jnp.array([0, 1, 0, 1, 1, 0], jnp.int32)
    actions, log_probs, _ = ppo.act(state, obs, task_ids, jax.random.PRNGKey(3))
    views = setup.task_weights(state.actor, tasks)
    for t in range(tasks):
        logits = ppo.actor_logits(view_of(views, t), obs, task_ids)
        expected = jax.nn.log_softmax(logits)[jnp.arange(6), actions]
        rows = np.asarray(task_ids) == t
        np.testing.assert_allclose(np.asarray(log_probs)[rows], np.asarray(expected)[rows],
                                   rtol=1e-5, atol=1e-6)
    # Task 0's view differs from the whole network (else the check above proves nothing).
    whole = ppo.actor_logits(masked_params(state.actor), obs, task_ids)
    assert not np.allclose(np.asarray(whole)[np.asarray(task_ids) == 0],
                           np.asarray(ppo.actor_logits(view_of(views, 0), obs,
                                                       task_ids))[np.asarray(task_ids) == 0])
