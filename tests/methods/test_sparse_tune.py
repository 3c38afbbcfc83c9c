"""sparse_tune (mtrl_sparse.methods.sparse_tune) against MIST's algorithm (zhwhu/MIST,
``models/simplecil_mist.py``): the first task trains densely; at a task boundary the network
waits unmoved while its own updates over ``score_samples`` samples score it; then only the top
5% of each trunk kernel moves (0.9^k after k earlier selections, at the trunk's learning-rate
scale), the task's own head, biases and norms are exempt, other tasks' heads are frozen,
gradients are dropped before Adam (which still moves the dropped entries), Adam starts fresh,
and each task's top entry of each trunk kernel is frozen for good."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import tree_utils

from mtrl_sparse.agents.net_state import MethodContext, NetState, apply_gradients, create_net_state
from mtrl_sparse.agents.optim import NetworkSetup, make_optimizer
from mtrl_sparse.methods.base import MethodError, NetworkMethodSettings
from mtrl_sparse.methods.network import check_network
from mtrl_sparse.methods.sparse_tune import (
    ENTRY,
    OVERLAP_DECAY,
    SparseTuneOptions,
    check_sparse_tune_run,
    drop_gradients,
    score_window,
)
from mtrl_sparse.methods.topology import FREE, task_index

TASKS, OUT = 3, 4
SHAPES = {"hidden": {"kernel": (32, 64), "bias": (64,)}, "norm": {"scale": (64,), "bias": (64,)},
          "heads": {"kernel": (64, TASKS * OUT), "bias": (TASKS * OUT,)}}
TASK_LEAVES = (("heads/kernel", -1, TASKS), ("heads/bias", -1, TASKS))
BATCH = 256
OPTIONS = SparseTuneOptions()  # the paper's defaults: 2,000 samples score, 8 updates of 256
WINDOW = 8
PHASE_UPDATES = 12


def random_params(key: jax.Array) -> dict:
    leaves = [(layer, name, shape) for layer, named in SHAPES.items()
              for name, shape in named.items()]
    keys = jax.random.split(key, len(leaves))
    params: dict = {layer: {} for layer in SHAPES}
    for k, (layer, name, shape) in zip(keys, leaves, strict=True):
        params[layer][name] = jax.random.normal(k, shape)
    return {"params": params}


def settings(batch_size: int = BATCH, phases: int = TASKS) -> NetworkMethodSettings:
    return NetworkMethodSettings("sparse_tune", 0.0, total_updates=PHASE_UPDATES * phases,
                                 phases=phases, task_leaves=TASK_LEAVES, batch_size=batch_size)


@functools.cache
def programs(options: SparseTuneOptions = OPTIONS, batch_size: int = BATCH):
    """Jitted ``new_state(key)`` and ``step(state, update, phase, key)``: one optimizer step on
    random gradients (the network's own chain with the method's transforms), then the
    method."""
    method = ENTRY.build(settings(batch_size), options)
    before, after = ENTRY.optimizer(options)
    tx = make_optimizer(1e-2, None, NetworkSetup(method, gradient_transforms=before,
                                                 update_transforms=after))

    def new_state(key: jax.Array) -> NetState:
        return create_net_state(random_params(key), tx, method, key)

    def step(state: NetState, update: jax.Array, phase: jax.Array, key: jax.Array) -> NetState:
        grads = random_params(key)
        params_before = state.params
        state = apply_gradients(state, grads, tx)
        context = MethodContext(grads=grads, dense_grads=grads, optimizer=tx, phase=phase,
                                params_before=params_before)
        return method.transform(state, update, key, context)

    return jax.jit(new_state), jax.jit(step)


class Run:
    """A network stepped through phases on random gradients, one update at a time."""

    def __init__(self, options: SparseTuneOptions = OPTIONS, batch_size: int = BATCH,
                 seed: int = 0):
        new_state, self.step_fn = programs(options, batch_size)
        self.key = jax.random.PRNGKey(seed)
        self.state = new_state(self.key)
        self.update = 0

    def advance(self, count: int, phase: int) -> list[NetState]:
        states = []
        for _ in range(count):
            self.update += 1
            self.state = self.step_fn(self.state, jnp.int32(self.update), jnp.int32(phase),
                                      jax.random.fold_in(self.key, self.update))
            states.append(self.state)
        return states

    def leaf(self, layer: str, name: str, state: NetState | None = None) -> np.ndarray:
        return np.asarray((state or self.state).params["params"][layer][name])


def factors(state: NetState) -> dict:
    return tree_utils.tree_get(state.opt_state, "sparse_tune_scale")["params"]


def head_slice(x: np.ndarray, task: int) -> np.ndarray:
    return x[..., task * OUT:(task + 1) * OUT]


def test_the_score_window_is_counted_in_each_networks_own_updates():
    """2,000 samples: PPO's actor (minibatches of 256) scores on 8 updates, its critic (one
    2,000-sample update per rollout) on 1, not on the actor's 8 rollouts' worth."""
    assert score_window(settings(256), OPTIONS) == WINDOW
    assert score_window(settings(2000), OPTIONS) == 1
    critic = Run(batch_size=2000)
    critic.advance(PHASE_UPDATES, 0)
    critic.advance(1, 1)  # the boundary update scores and chooses at once
    assert int(critic.state.method_state["tunings"]) == 1
    assert not bool(critic.state.method_state["scoring"])


def test_the_network_waits_unmoved_from_the_boundary_until_its_subset_is_chosen():
    run = Run()
    run.advance(PHASE_UPDATES, 0)
    before = jax.tree.leaves(run.state.params)
    scoring = run.advance(WINDOW, 1)  # the boundary update is undone, then 7 frozen updates
    for state in scoring:
        for a, b in zip(before, jax.tree.leaves(state.params), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(run.state.method_state["tunings"]) == 1
    # The score is the sum of the window's squared gradients (the boundary's included).
    grads = [random_params(jax.random.fold_in(run.key, u))
             for u in range(PHASE_UPDATES + 1, PHASE_UPDATES + WINDOW + 1)]
    expected = sum(np.asarray(g["params"]["hidden"]["kernel"]) ** 2 for g in grads)
    np.testing.assert_allclose(run.state.method_state["score"]["params"]["hidden"]["kernel"],
                               expected, rtol=1e-5)


def test_selection_exemptions_and_what_moves_in_a_tuned_task():
    """After the choice: 5% of the trunk kernel (its top scores) moves, every trunk bias and
    norm entry and the task's own head move, the other tasks' heads and the unselected trunk
    entries stay bit-identical."""
    run = Run()
    run.advance(PHASE_UPDATES, 0)
    run.advance(WINDOW, 1)
    score = np.asarray(run.state.method_state["score"]["params"]["hidden"]["kernel"])
    selected = np.asarray(run.state.method_state["selected"]["params"]["hidden"]["kernel"])
    assert selected.sum() == round(0.05 * selected.size)
    assert score[selected].min() >= score[~selected].max()
    chosen = run.state
    run.advance(150, 1)  # each entry gets a kept gradient (0.9^150 ~ 1e-7 it never does)
    moved = {(layer, name): run.leaf(layer, name) != run.leaf(layer, name, chosen)
             for layer, named in SHAPES.items() for name in named}
    np.testing.assert_array_equal(moved["hidden", "kernel"], selected)
    for exempt in [("hidden", "bias"), ("norm", "scale"), ("norm", "bias")]:
        assert moved[exempt].all(), exempt
    for name in ("kernel", "bias"):
        assert head_slice(moved["heads", name], 1).all()
        assert not head_slice(moved["heads", name], 0).any()
        assert not head_slice(moved["heads", name], 2).any()


def test_update_factors_scale_earlier_selections_by_0_9_to_the_k_and_the_trunk_by_its_rate():
    run = Run()
    run.advance(PHASE_UPDATES, 0)
    run.advance(PHASE_UPDATES, 1)
    first = np.asarray(run.state.method_state["selected"]["params"]["hidden"]["kernel"])
    run.advance(PHASE_UPDATES, 2)
    ms = run.state.method_state
    second = np.asarray(ms["selected"]["params"]["hidden"]["kernel"])
    frozen = np.asarray(ms["frozen"]["params"]["hidden"]["kernel"])
    factor = np.asarray(factors(run.state)["hidden"]["kernel"])
    trunk = OPTIONS.trunk_learning_rate_scale
    assert (first & second).any() and (second & ~first).any()  # random gradients overlap
    np.testing.assert_allclose(factor[second & first], OVERLAP_DECAY * trunk, rtol=1e-6)
    np.testing.assert_allclose(factor[second & ~first], trunk, rtol=1e-6)
    assert not factor[~second].any()
    np.testing.assert_allclose(np.asarray(factors(run.state)["norm"]["scale"]), trunk)
    head = np.asarray(factors(run.state)["heads"]["kernel"])
    assert (head_slice(head, 2) == 1).all() and not head[..., :2 * OUT].any()
    np.testing.assert_array_equal(np.asarray(ms["overlap"]["params"]["hidden"]["kernel"]),
                                  first.astype(int) + second)
    assert frozen.sum() == 2  # the top entry of tasks 1 and 2


def test_each_tasks_top_entry_is_frozen_for_good_and_never_selected_again():
    run = Run()
    run.advance(PHASE_UPDATES, 0)
    run.advance(PHASE_UPDATES, 1)
    ms = run.state.method_state
    score = np.asarray(ms["score"]["params"]["hidden"]["kernel"])
    frozen = np.asarray(ms["frozen"]["params"]["hidden"]["kernel"])
    assert frozen.sum() == 1 and score[frozen].item() == score.max()
    assert not np.asarray(ms["frozen"]["params"]["hidden"]["bias"]).any()  # biases exempt
    value = run.leaf("hidden", "kernel")[frozen]
    run.advance(PHASE_UPDATES, 2)
    np.testing.assert_array_equal(run.leaf("hidden", "kernel")[frozen], value)
    assert not np.asarray(run.state.method_state["selected"]["params"]["hidden"]["kernel"]
                          )[frozen].any()


def test_dropping_acts_on_the_gradient_before_adam_so_dropped_entries_still_move():
    """MIST masks the gradient before SGD with momentum: a dropped entry's momentum still moves
    it. Here a dropped entry gets gradient 0, and Adam's first moment still moves it."""
    tx = optax.chain(drop_gradients(0.1), optax.scale_by_adam(), optax.scale(-1e-2))
    params = {"w": jnp.ones((4096,))}
    state = tx.init(params)
    state = tree_utils.tree_set(state, sparse_tune_tuning=jnp.ones((), bool))
    grads = {"w": jnp.ones((4096,))}
    dropped_first, state = tx.update(grads, tree_utils.tree_set(
        state, sparse_tune_key=jax.random.PRNGKey(1)), params)
    reached = np.asarray(dropped_first["w"]) != 0  # the entries whose gradient was kept
    assert 0.07 < reached.mean() < 0.13
    second, state = tx.update(grads, tree_utils.tree_set(
        state, sparse_tune_key=jax.random.PRNGKey(2)), params)
    moved = np.asarray(second["w"]) != 0
    assert moved[reached].all()  # dropped at step 2 or not, momentum moves them
    assert moved.mean() < 0.25  # the rest got no gradient yet: no moment, no move


def test_adam_starts_fresh_when_the_subset_is_chosen():
    run = Run()
    run.advance(PHASE_UPDATES, 0)
    adam = [s for s in jax.tree.leaves(run.state.opt_state, is_leaf=lambda x: isinstance(
        x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
    assert int(adam[0].count) == PHASE_UPDATES
    run.advance(WINDOW, 1)
    (adam,) = [s for s in jax.tree.leaves(run.state.opt_state, is_leaf=lambda x: isinstance(
        x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
    assert int(adam.count) == 0
    assert not any(np.asarray(m).any() for m in jax.tree.leaves((adam.mu, adam.nu)))


def test_the_task_index_of_per_task_leaves():
    params = random_params(jax.random.PRNGKey(0))
    tasks = task_index(params, TASK_LEAVES)["params"]
    assert (np.asarray(tasks["hidden"]["kernel"]) == FREE).all()
    heads = np.asarray(tasks["heads"]["kernel"])
    assert [set(np.unique(head_slice(heads, t))) for t in range(TASKS)] == [{0}, {1}, {2}]
    assert list(np.asarray(tasks["heads"]["bias"])) == [t for t in range(TASKS) for _ in range(OUT)]


def test_without_task_boundaries_sparse_tune_is_refused():
    with pytest.raises(MethodError, match="acts at task boundaries.*--schedule sequential"):
        check_network(settings(phases=1), None, "actor")
    check_network(settings())
    with pytest.raises(MethodError, match="scales"):
        check_network(NetworkMethodSettings("sparse_tune+sign_in", 0.0, total_updates=100,
                                            phases=3, batch_size=BATCH))
    with pytest.raises(ValueError, match="score-samples 2000"):
        check_sparse_tune_run(NetworkMethodSettings("sparse_tune", 0.0, total_updates=24,
                                                    phases=3, batch_size=256), OPTIONS,
                              "critic")
