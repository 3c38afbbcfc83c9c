"""ibm (mtrl_sparse.methods.ibm) against the authors' code (zackschen/IBM-Net): trunk weights
gated under an information-bottleneck penalty, heads ungated; at a task boundary the task's hard
mask joins the frozen set while every gate stays trainable, each task keeps a snapshot of its
sub-network and acts with it, so training a later task leaves an earlier task's outputs
unchanged while the later task re-uses and leaves out earlier tasks' weights."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtrl_sparse.agents.cnn import per_task_leaves as cnn_task_leaves
from mtrl_sparse.agents.cnn import stacked_head_layers as cnn_head_layers
from mtrl_sparse.agents.net_state import (
    MethodContext,
    NetState,
    create_net_state,
    masked_params,
    training_weights,
)
from mtrl_sparse.agents.networks import MultiHeadMLP, per_task_leaves, stacked_head_layers
from mtrl_sparse.agents.optim import make_optimizer, masked_gradient_step
from mtrl_sparse.agents.ppo import PPOConfig, make_ppo
from mtrl_sparse.methods.base import MethodError, NetworkMethodSettings
from mtrl_sparse.methods.ibm import (
    IBMOptions,
    current_view,
    kept,
    kl_gradients,
    kl_penalty,
    svd_ratio,
)
from mtrl_sparse.methods.network import build_network, check_network
from mtrl_sparse.methods.registry import method_options_class
from mtrl_sparse.methods.topology import task_index
from support.invariants import assert_mask_invariant

NUM_TASKS, IN_DIM, OUT_DIM, BATCH = 3, 6, 2, 32
NET = MultiHeadMLP((32, 32), NUM_TASKS, OUT_DIM)
TRUNK = ("hidden_0", "hidden_1")


def settings(name: str = "ibm", sparsity: float = 0.0, phases: int = NUM_TASKS):
    return NetworkMethodSettings(name, sparsity, total_updates=300, phases=phases,
                                 layer_slices=stacked_head_layers(NUM_TASKS),
                                 task_leaves=per_task_leaves(NUM_TASKS), batch_size=BATCH)


def options_with(ibm: IBMOptions):
    return method_options_class()(ibm=ibm)


@functools.cache
def programs(name: str = "ibm", sparsity: float = 0.0, kl_weight: float = 1e-3,
             gate_learning_rate: float = 1e-2, phases: int = NUM_TASKS):
    """Jitted ``new_state(key)``, ``step(state, update, phase, key)`` (one regression step on
    the phase's task through ``masked_gradient_step``) and ``views(state)``."""
    options = options_with(IBMOptions(kl_weight=kl_weight, gate_learning_rate=gate_learning_rate))
    setup = build_network(settings(name, sparsity, phases), options)
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


def ibm_state(state: NetState) -> dict:
    return state.method_state["ibm"]


def leaf(tree, layer: str, name: str = "kernel") -> np.ndarray:
    return np.asarray(tree["params"][layer][name])


def trained_through_task_one():
    """(state at the end of task 0, after the boundary update, after 150 updates of task 1)."""
    new_state, step, views, _ = programs()
    task0 = train(new_state(jax.random.PRNGKey(0)), step, 0, range(1, 151))
    boundary = train(task0, step, 1, range(151, 152))
    task1 = train(boundary, step, 1, range(152, 302))
    return task0, boundary, task1, views


def test_an_earlier_tasks_outputs_stay_unchanged_while_the_next_task_trains():
    task0, boundary, task1, views = trained_through_task_one()
    assert int(ibm_state(boundary)["consolidations"]) == 1
    # Task 0's snapshot is the sub-network it acted with at its end.
    np.testing.assert_allclose(outputs(view_of(views(boundary), 0), 0),
                               outputs(view_of(views(task0), 0), 0), rtol=1e-6)
    np.testing.assert_array_equal(outputs(view_of(views(task1), 0), 0),
                                  outputs(view_of(views(boundary), 0), 0))
    assert not np.allclose(outputs(view_of(views(task1), 1), 1),
                           outputs(view_of(views(boundary), 1), 1))  # task 1 did train
    # Without the snapshot the network's task-0 outputs did change (shared biases, gates).
    assert not np.allclose(outputs(masked_params(task1), 0), outputs(masked_params(boundary), 0))


def test_frozen_weights_stay_but_their_gates_keep_training_and_the_next_task_re_uses_them():
    """The authors' defining difference from PackNet: after task 0 its weights are frozen, yet
    every gate trains on task 1, so task 1's mask keeps some of task 0's weights (re-use),
    leaves others out, and adds free ones."""
    _, boundary, task1, _ = trained_through_task_one()
    frozen = leaf(ibm_state(boundary)["consolidated"], "hidden_0")
    assert 0 < frozen.mean() < 1, "task 0 froze none or all of the first trunk layer"
    np.testing.assert_array_equal(leaf(task1.params, "hidden_0")[frozen],
                                  leaf(boundary.params, "hidden_0")[frozen])
    # Task 0 left its gradient-less weights out (the one-hot inputs of tasks 1 and 2): task 1
    # trains its own, free, row.
    assert not frozen[IN_DIM + 1:].any()
    assert (leaf(task1.params, "hidden_0")[IN_DIM + 1] != leaf(boundary.params, "hidden_0")[
        IN_DIM + 1]).all()
    mu0, mu1 = leaf(boundary.scales, "hidden_0"), leaf(task1.scales, "hidden_0")
    assert (mu1[frozen] != mu0[frozen]).mean() > 0.99  # gates of frozen weights trained
    mask1 = np.asarray(kept(mu1, leaf(ibm_state(task1)["log_var"], "hidden_0")))
    assert (mask1 & frozen).any() and (~mask1 & frozen).any() and (mask1 & ~frozen).any()


def test_heads_are_ungated_and_each_tasks_head_freezes_with_it():
    task0, boundary, task1, _ = trained_through_task_one()
    state = ibm_state(task1)
    assert state["log_var"]["params"]["heads"]["kernel"] is None
    for name in ("kernel", "bias"):
        scale = task1.scales["params"]["heads"].get(name)
        if scale is not None:
            np.testing.assert_array_equal(np.asarray(scale), 1.0)
            assert not np.asarray(task1.scale_noise["params"]["heads"][name]).any()
        frozen = leaf(state["consolidated"], "heads", name).reshape(-1, NUM_TASKS, OUT_DIM)
        assert frozen[:, 0].all() and not frozen[:, 1:].any()
        moved = (leaf(task1.params, "heads", name) != leaf(boundary.params, "heads", name)
                 ).reshape(-1, NUM_TASKS, OUT_DIM)
        # Task 1's head trains (but not on the hidden units task 1's sub-network left out).
        assert not moved[:, 0].any() and moved[:, 1].mean() > 0.5 and not moved[:, 2].any()
    # Shared biases keep training for task 1 (task 0 reads its own snapshot of them).
    assert not leaf(state["consolidated"], "hidden_0", "bias").any()
    assert (leaf(task1.params, "hidden_0", "bias") != leaf(boundary.params, "hidden_0", "bias")
            ).all()


def test_kept_fraction_counts_the_trunk_and_the_tasks_own_head_only():
    _, _, task1, _ = trained_through_task_one()
    state = ibm_state(task1)
    kept_trunk = [np.asarray(kept(leaf(task1.scales, layer), leaf(state["log_var"], layer)))
                  for layer in TRUNK]
    own_head = leaf(task1.params, "heads").size // NUM_TASKS
    trunk = sum(k.size for k in kept_trunk)
    expected = (sum(k.sum() for k in kept_trunk) + own_head) / (trunk + own_head)
    assert float(state["kept_fraction"]) == pytest.approx(expected, rel=1e-6)
    assert float(state["trunk_kept_fraction"]) == pytest.approx(
        sum(k.sum() for k in kept_trunk) / trunk, rel=1e-6)
    frozen = sum(leaf(state["consolidated"], layer).sum() for layer in TRUNK) / trunk
    assert float(state["frozen_fraction"]) == pytest.approx(frozen, rel=1e-6)
    for layer in TRUNK:
        assert float(state["layers"][layer]["frozen"]) == pytest.approx(
            leaf(state["consolidated"], layer).mean(), rel=1e-6)


def test_both_adams_start_anew_at_a_boundary():
    _, boundary, _, _ = trained_through_task_one()
    (adam,) = [s for s in jax.tree.leaves(boundary.opt_state, is_leaf=lambda x: isinstance(
        x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
    assert int(adam.count) == 0
    counts = [int(s.count) for s in jax.tree.leaves(
        ibm_state(boundary)["gate_opt"], is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)]
    assert counts == [0]


def test_a_task_acts_with_its_gate_scale_mu_plus_sigma_under_its_hard_mask():
    params = {"w": jnp.array([2.0, 2.0, 2.0])}
    mu = {"w": jnp.array([1.0, 0.5, 0.01])}
    log_var = {"w": jnp.log(jnp.array([0.04, 0.04, 0.04]))}  # sigma 0.2
    view = current_view(params, mu, log_var, {"w": None})
    np.testing.assert_allclose(np.asarray(view["w"]), [2 * 1.2, 2 * 0.7, 0.0], rtol=1e-6)


def test_the_svd_ratio_counts_the_channels_that_explain_97_percent_of_the_variance():
    key = jax.random.PRNGKey(0)
    basis = jax.random.normal(key, (2, 8))
    low_rank = jax.random.normal(jax.random.fold_in(key, 1), (256, 2)) @ basis
    assert float(svd_ratio(low_rank, 0.97)) <= 2 / 8
    full = jax.random.normal(jax.random.fold_in(key, 2), (256, 8))
    assert float(svd_ratio(full, 0.97)) == pytest.approx(7 / 8)  # the 8th tips past 97%


def test_the_penalty_prunes_gates_and_the_forward_pass_is_noisy():
    new_state, step, views, _ = programs(kl_weight=10.0)
    state = train(new_state(jax.random.PRNGKey(2)), step, 0, range(1, 201))
    kept_share = float(ibm_state(state)["trunk_kept_fraction"])
    assert kept_share < 0.9, kept_share
    noise = [np.asarray(n) for n in jax.tree.leaves(state.scale_noise)]
    assert any(np.any(n != 0) for n in noise)
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(training_weights(state)), jax.tree.leaves(masked_params(state)),
        strict=True))
    # Before any boundary every task acts with the current sub-network.
    for t in range(1, NUM_TASKS):
        np.testing.assert_array_equal(outputs(view_of(views(state), t), t),
                                      outputs(view_of(views(state), 0), t))


def test_multi_task_ibm_freezes_nothing():
    new_state, step, _, setup = programs(phases=1)
    assert setup.task_weights is None
    state = train(new_state(jax.random.PRNGKey(4)), step, 0, range(1, 51))
    assert float(ibm_state(state)["frozen_fraction"]) == 0.0
    assert int(ibm_state(state)["consolidations"]) == 0


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
    tasks = task_index(params, per_task_leaves(NUM_TASKS))["params"]
    np.testing.assert_array_equal(np.asarray(tasks["heads"]["bias"]),
                                  np.repeat(np.arange(NUM_TASKS), OUT_DIM))
    assert np.all(np.asarray(tasks["hidden_1"]["kernel"]) == -1)


@pytest.mark.parametrize("name", ["ibm+sign_in", "ibm+sparse_tune"])
def test_refuses_compositions_that_clash(name):
    with pytest.raises(MethodError, match="ibm on the actor cannot be combined"):
        check_network(settings(name), network="actor")


def test_ppo_acts_with_each_samples_own_task_view():
    """A PPO actor under sequential IBM: each sample's log-probabilities are those of its own
    task's view (here task 0 has ended with a snapshot of other weights, task 1 is being
    trained)."""
    tasks = 2
    config = PPOConfig(rollout_env_steps=8, policy_batch_size=4, critic_batch_size=8,
                       conv_channels=(4, 8, 8), head_hidden_dim=8)
    setup = build_network(NetworkMethodSettings("ibm", 0.0, total_updates=100, phases=tasks,
                                                layer_slices=cnn_head_layers(tasks),
                                                task_leaves=cnn_task_leaves(tasks)))
    ppo = make_ppo(config, tasks, (7, 7, 3), 7, setup, setup)
    state = ppo.init(jax.random.PRNGKey(0))
    ibm = state.actor.method_state["ibm"]
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 64))
    views = jax.tree.map(lambda v: v.at[0].set(v[0] + jax.random.normal(next(keys), v.shape[1:])),
                         ibm["views"])
    actor = state.actor.replace(method_state={"ibm": {**ibm, "views": views,
                                                      "phase": jnp.int32(1)}})
    state = state.replace(actor=actor)
    obs = jax.random.randint(jax.random.PRNGKey(2), (6, 7, 7, 3), 0, 6).astype(jnp.float32)
    task_ids = jnp.array([0, 1, 0, 1, 1, 0], jnp.int32)
    actions, log_probs, _ = ppo.act(state, obs, task_ids, jax.random.PRNGKey(3))
    per_task = setup.task_weights(state.actor, tasks)
    for t in range(tasks):
        logits = ppo.actor_logits(view_of(per_task, t), obs, task_ids)
        expected = jax.nn.log_softmax(logits)[jnp.arange(6), actions]
        rows = np.asarray(task_ids) == t
        np.testing.assert_allclose(np.asarray(log_probs)[rows], np.asarray(expected)[rows],
                                   rtol=1e-5, atol=1e-6)
    # Task 0's view differs from task 1's (else the check above proves nothing).
    rows = np.asarray(task_ids) == 0
    assert not np.allclose(np.asarray(ppo.actor_logits(view_of(per_task, 1), obs, task_ids))[rows],
                           np.asarray(ppo.actor_logits(view_of(per_task, 0), obs, task_ids))[rows])
