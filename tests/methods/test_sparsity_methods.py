"""GMP, SET and RigL (mtrl_sparse.methods.gmp and .sparse_evolution), tested as properties.

Each transform runs on a real optax state (clip -> Adam -> learning rate) whose moments are
nonzero, at steps drawn on and next to event boundaries, with the target sparsity and keys as traced
data (one compilation per method and tree). After every call, whatever the method:
- masks are bool arrays congruent with the params, None exactly on the biases;
- params == params * masks, and Adam's mu and nu are zero wherever a weight is masked, was pruned or
  was regrown; every other weight and moment is untouched.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl_sparse.agents.net_state import (
    MethodContext,
    NetState,
    apply_gradients,
    apply_masks,
    create_net_state,
)
from mtrl_sparse.methods.base import NetworkMethodSettings
from mtrl_sparse.methods.gmp import GMPOptions, cubic_sparsity, gmp
from mtrl_sparse.methods.network import build_network, check_network
from mtrl_sparse.methods.registry import MethodOptions
from mtrl_sparse.methods.sparse_evolution import (
    RigLOptions,
    SETOptions,
    rigl,
    sparse_evolution_set,
)
from mtrl_sparse.methods.topology import layer_densities
from support.invariants import (
    assert_mask_invariant,
    assert_trees_close,
    assert_trees_equal,
    stack_trees,
)

# Two small MLPs (kernel shapes per layer); the second has a tiny first layer, which ERK keeps
# dense at low sparsity (a layer with nothing to regrow into).
TREES = (
    {"hidden_0": (6, 16), "hidden_1": (16, 16), "head": (16, 4)},
    {"hidden_0": (3, 8), "out": (8, 2)},
)
DISTRIBUTIONS = ("uniform", "erk")  # of each tree, for SET and RigL's initial topology
TOTAL_UPDATES = 1000
TX = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(),
                 optax.scale_by_learning_rate(1e-3))

# GMP: t_start = 50, t_end = 800, events every 30 updates from 60; 810 is the first event at or
# after t_end, where s_f is reached.
GMP_EVERY = 30
GMP_EVENTS = frozenset(range(60, 801, GMP_EVERY)) | {810}
# SET: every 40 updates up to t_end = 1000 (constant zeta 0.3).
# RigL: every 40 updates up to t_end = 750 (cosine-decayed zeta from 0.3), so 760 is no event.
EVOLVE_EVERY = 40
SET_EVENTS = frozenset(range(40, 1001, EVOLVE_EVERY))
RIGL_EVENTS = frozenset(range(40, 751, EVOLVE_EVERY))

BUILDERS = {
    "gmp_layer": lambda s: gmp(s, GMPOptions(prune_every_updates=GMP_EVERY, scope="layer")),
    "gmp_global": lambda s: gmp(s, GMPOptions(prune_every_updates=GMP_EVERY, scope="global")),
    "set": lambda s: sparse_evolution_set(s, SETOptions(update_every_updates=EVOLVE_EVERY)),
    "rigl": lambda s: rigl(s, RigLOptions(update_every_updates=EVOLVE_EVERY)),
}


def gmp_sparsity(step: int, final: float) -> float:
    """The cubic schedule, written out in float64 (t_start = 50, t_end = 800)."""
    if step < 50:
        return 0.0
    if step >= 800:
        return final
    return final * (1 - (1 - (step - 50) / 750) ** 3)


def zeta(method: str, step: int) -> float:
    """Drop fraction at an event: SET constant 0.3; RigL 0.3 (1 + cos(pi t / 750)) / 2."""
    return 0.3 if method == "set" else 0.3 * (1 + math.cos(math.pi * step / 750)) / 2


def random_tree(tree: int, key: jax.Array) -> dict:
    keys = iter(jax.random.split(key, 2 * len(TREES[tree])))
    return {"params": {
        name: {"kernel": jax.random.normal(next(keys), shape),
               "bias": jax.random.normal(next(keys), shape[1:])}
        for name, shape in TREES[tree].items()
    }}


def build(method: str, sparsity, tree: int):
    return BUILDERS[method](NetworkMethodSettings(method, sparsity, DISTRIBUTIONS[tree],
                                                  TOTAL_UPDATES))


@functools.cache
def programs(method: str, tree: int):
    """Jitted (new_state(sparsity, key), train(state, key), transform(state, step, key, grads))."""

    def train(state: NetState, key: jax.Array) -> NetState:
        return apply_gradients(state, apply_masks(random_tree(tree, key), state.masks), TX)

    def new_state(sparsity: jax.Array, key: jax.Array) -> NetState:
        k_params, k_masks, k_train = jax.random.split(key, 3)
        state = create_net_state(random_tree(tree, k_params), TX, build(method, sparsity, tree),
                                 k_masks)
        for k in jax.random.split(k_train, 2):  # nonzero Adam moments
            state = train(state, k)
        return state

    def transform(state: NetState, step: jax.Array, key: jax.Array, dense_grads) -> NetState:
        context = MethodContext(grads=apply_masks(dense_grads, state.masks),
                                dense_grads=dense_grads, optimizer=TX, params_before=state.params)
        # Built at another sparsity: the transform must read the target from the state.
        return build(method, 0.5, tree).transform(state, step, key, context)

    return jax.jit(new_state), jax.jit(train), jax.jit(transform)


def layers(state: NetState) -> dict[str, dict[str, np.ndarray]]:
    """Per masked kernel: its mask, weights and Adam moments, as numpy."""
    adam = state.opt_state[1]
    out = {}
    for name in state.params["params"]:
        out[name] = {
            "mask": np.asarray(state.masks["params"][name]["kernel"]),
            "w": np.asarray(state.params["params"][name]["kernel"]),
            "mu": np.asarray(adam.mu["params"][name]["kernel"]),
            "nu": np.asarray(adam.nu["params"][name]["kernel"]),
        }
    return out


def check_invariants(before: NetState, after: NetState) -> dict[str, dict[str, np.ndarray]]:
    """The invariants of every transform; returns the per-layer arrays (with the old mask)."""
    assert_mask_invariant(after)
    for name, layer in after.masks["params"].items():
        assert layer["bias"] is None
        assert layer["kernel"].dtype == jnp.bool_
        assert layer["kernel"].shape == after.params["params"][name]["kernel"].shape
    old, new = layers(before), layers(after)
    for name, layer in new.items():
        mask, old_mask = layer["mask"], old[name]["mask"]
        np.testing.assert_array_equal(layer["w"], np.where(mask, layer["w"], 0))
        fresh = ~mask | (mask != old_mask)  # masked, pruned or regrown
        assert not layer["mu"][fresh].any() and not layer["nu"][fresh].any()
        stays = mask & old_mask
        for leaf in ("w", "mu", "nu"):
            np.testing.assert_array_equal(layer[leaf][stays], old[name][leaf][stays])
        layer["old_mask"], layer["old_w"] = old_mask, old[name]["w"]
    for tree_before, tree_after in ((before.params, after.params),
                                    (before.opt_state[1].mu, after.opt_state[1].mu),
                                    (before.opt_state[1].nu, after.opt_state[1].nu)):
        for name in new:  # unmasked leaves are left alone
            np.testing.assert_array_equal(tree_before["params"][name]["bias"],
                                          tree_after["params"][name]["bias"])
    return new


def changed_fraction(new: dict) -> float:
    changed = sum(int((la["mask"] != la["old_mask"]).sum()) for la in new.values())
    return changed / sum(la["mask"].size for la in new.values())


def near_events(every: int, last_k: int, edges: tuple[int, ...]):
    """Steps on and next to multiples of ``every`` (k * every + {-1, 0, 1}, at least 1) and to
    the schedule's ``edges`` (first and last event, t_start, t_end)."""
    multiples = st.builds(lambda k, d: max(1, k * every + d), st.integers(0, last_k),
                          st.sampled_from((-1, 0, 1)))
    return st.one_of(multiples, st.sampled_from([e + d for e in edges for d in (-1, 0, 1)]))


def two_steps(every: int, last_k: int, edges: tuple[int, ...]):
    return st.lists(near_events(every, last_k, edges), min_size=2, max_size=2).map(sorted)


def run_steps(method, tree, sparsity, seed, steps):
    """Yield (step, before, after) for the transform at each step, training in between."""
    new_state, train, transform = programs(method, tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 + 3 * len(steps))
    state = new_state(jnp.float32(sparsity), keys[0])
    for i, step in enumerate(steps):
        k_train, k_method, k_grads = keys[2 + 3 * i: 5 + 3 * i]
        state = train(state, k_train)
        dense_grads = random_tree(tree, k_grads)
        after = transform(state, jnp.int32(step), k_method, dense_grads)
        yield step, state, after, dense_grads
        state = after


@settings(deadline=None)
@given(tree=st.sampled_from(range(len(TREES))), scope=st.sampled_from(("layer", "global")),
       sparsity=st.floats(0.05, 0.99), seed=st.integers(0, 2**16),
       steps=two_steps(GMP_EVERY, 31, (50, 60, 800, 810)))
def test_gmp_prunes_to_the_cubic_schedule_by_magnitude_and_never_regrows(
        tree, scope, sparsity, seed, steps):
    for step, before, after, _ in run_steps(f"gmp_{scope}", tree, sparsity, seed, steps):
        new = check_invariants(before, after)
        state_before, state = before.method_state, after.method_state
        np.testing.assert_allclose(state["target_sparsity"], sparsity, rtol=1e-6)
        if step not in GMP_EVENTS:
            assert_trees_equal(before, after)
            continue
        assert int(state["events"]) == int(state_before["events"]) + 1
        target = gmp_sparsity(step, np.float32(sparsity))
        np.testing.assert_allclose(state["scheduled_sparsity"], target, atol=1e-5)
        np.testing.assert_allclose(state["mask_change"], changed_fraction(new), atol=1e-6)
        for layer in new.values():
            assert not (layer["mask"] & ~layer["old_mask"]).any()  # never regrows
        # One magnitude threshold per layer (each at its target under the tree's distribution),
        # or one for the whole network.
        groups = [[la] for la in new.values()] if scope == "layer" else [list(new.values())]
        densities = (layer_densities([la["mask"].shape for la in new.values()], target,
                                     DISTRIBUTIONS[tree]) if scope == "layer"
                     else [1 - target])
        for chosen, density in zip(groups, densities, strict=True):
            mask = np.concatenate([la["mask"].ravel() for la in chosen])
            old_mask = np.concatenate([la["old_mask"].ravel() for la in chosen])
            magnitude = np.abs(np.concatenate([la["old_w"].ravel() for la in chosen]))
            assert abs(mask.sum() - float(density) * mask.size) <= 1.0
            pruned = old_mask & ~mask
            if pruned.any() and mask.any():
                assert magnitude[mask].min() >= magnitude[pruned].max()


def check_evolution(method, events, tree, sparsity, seed, steps):
    for step, before, after, dense_grads in run_steps(method, tree, sparsity, seed, steps):
        new = check_invariants(before, after)
        state_before, state = before.method_state, after.method_state
        if step not in events:
            assert_trees_equal(before, after)
            continue
        assert int(state["events"]) == int(state_before["events"]) + 1
        np.testing.assert_allclose(state["drop_fraction"], zeta(method, step), atol=1e-6)
        np.testing.assert_allclose(state["mask_change"], changed_fraction(new), atol=1e-6)
        for name, layer in new.items():
            mask, old_mask = layer["mask"], layer["old_mask"]
            active, inactive = int(old_mask.sum()), int((~old_mask).sum())
            assert int(mask.sum()) == active  # constant active count per layer
            dropped, grown = old_mask & ~mask, mask & ~old_mask
            assert dropped.sum() == grown.sum() <= inactive
            assert abs(dropped.sum() - min(zeta(method, step) * active, inactive)) <= 0.5 + 1e-3
            magnitude = np.abs(layer["old_w"])
            if dropped.any() and (mask & old_mask).any():  # the smallest active weights dropped
                assert magnitude[mask & old_mask].min() >= magnitude[dropped].max()
            assert not layer["w"][grown].any()  # grown weights start at zero
            if method == "rigl":  # exactly the largest |dense grad| among the inactive weights
                grad = np.abs(np.asarray(dense_grads["params"][name]["kernel"]))
                candidates = np.flatnonzero(~old_mask)
                best = candidates[np.argsort(-grad.ravel()[candidates])[:int(grown.sum())]]
                np.testing.assert_array_equal(np.sort(best), np.flatnonzero(grown))


@settings(deadline=None)
@given(tree=st.sampled_from(range(len(TREES))), sparsity=st.floats(0.05, 0.95),
       seed=st.integers(0, 2**16), steps=two_steps(EVOLVE_EVERY, 27, (40, 1000, 1040)))
def test_set_drops_smallest_and_regrows_randomly_at_constant_density(tree, sparsity, seed, steps):
    check_evolution("set", SET_EVENTS, tree, sparsity, seed, steps)


@settings(deadline=None)
@given(tree=st.sampled_from(range(len(TREES))), sparsity=st.floats(0.05, 0.95),
       seed=st.integers(0, 2**16), steps=two_steps(EVOLVE_EVERY, 20, (40, 720, 750, 760)))
def test_rigl_regrows_the_largest_dense_gradients_at_constant_density(tree, sparsity, seed, steps):
    check_evolution("rigl", RIGL_EVENTS, tree, sparsity, seed, steps)


def test_set_regrows_uniformly_among_inactive_weights():
    # One event, 200 keys: every inactive weight of the (16, 16) layer is regrown at least once,
    # and about as often as the others (expected count 200 * grown / inactive each).
    new_state, _, transform = programs("set", 0)
    state = new_state(jnp.float32(0.8), jax.random.PRNGKey(0))
    grads = random_tree(0, jax.random.PRNGKey(1))
    old_mask = np.asarray(state.masks["params"]["hidden_1"]["kernel"])
    counts = np.zeros(old_mask.shape)
    for seed in range(200):
        after = transform(state, jnp.int32(40), jax.random.PRNGKey(seed), grads)
        counts += np.asarray(after.masks["params"]["hidden_1"]["kernel"]) & ~old_mask
    inactive = counts[~old_mask]
    expected = 200 * round(0.3 * old_mask.sum()) / inactive.size
    assert inactive.min() > 0
    assert abs(inactive.mean() - expected) < 1e-9 and inactive.std() < 0.5 * expected


def test_gmp_reaches_the_final_sparsity_over_the_whole_schedule():
    # Every event in turn; after the last one (810 >= t_end) each layer is at s_f exactly.
    new_state, train, transform = programs("gmp_layer", 0)
    state = new_state(jnp.float32(0.9), jax.random.PRNGKey(0))
    grads = random_tree(0, jax.random.PRNGKey(1))
    for step in sorted(GMP_EVENTS):
        state = transform(train(state, jax.random.PRNGKey(step)), jnp.int32(step),
                          jax.random.PRNGKey(step), grads)
    assert int(state.method_state["events"]) == len(GMP_EVENTS)
    for name, shape in TREES[0].items():
        kept = int(state.masks["params"][name]["kernel"].sum())
        assert kept == round(0.1 * math.prod(shape))


def test_cubic_schedule_by_hand():
    # s_f = 0.8, t_start = 100, t_end = 200: at t = 150, 0.8 * (1 - 0.5^3) = 0.7.
    values = [float(cubic_sparsity(jnp.int32(t), 0.8, 100.0, 200.0)) for t in (50, 100, 150, 200,
                                                                               300)]
    np.testing.assert_allclose(values, [0.0, 0.0, 0.7, 0.8, 0.8], rtol=1e-6)


@pytest.mark.parametrize("method", ["gmp_layer", "gmp_global", "rigl"])
def test_vmapped_over_sparsities_and_keys_equals_separate_calls(method):
    # 2 target sparsities x 2 keys in one program, the step shared (unbatched): the event stays a
    # real branch (a cond in the program) and every run equals its own separate call.
    new_state, train, transform = programs(method, 0)
    runs = [(sparsity, seed) for sparsity in (0.5, 0.9) for seed in (0, 1)]
    states = [train(new_state(jnp.float32(s), jax.random.PRNGKey(seed)), jax.random.PRNGKey(7))
              for s, seed in runs]
    keys = [jax.random.PRNGKey(10 + seed) for _, seed in runs]
    grads = [random_tree(0, jax.random.PRNGKey(20 + i)) for i in range(len(runs))]
    vmapped = jax.jit(jax.vmap(transform, in_axes=(0, None, 0, 0)))
    batched = stack_trees(states)
    assert "cond" in str(jax.make_jaxpr(vmapped)(batched, jnp.int32(360), stack_trees(keys),
                                                 stack_trees(grads)))
    for step in (360, 361, 720, 810):  # events of gmp and rigl, an off step, gmp's last event
        batched = vmapped(batched, jnp.int32(step), stack_trees(keys), stack_trees(grads))
        states = [transform(s, jnp.int32(step), k, g)
                  for s, k, g in zip(states, keys, grads, strict=True)]
        for i, single in enumerate(states):
            one = jax.tree.map(lambda x, i=i: x[i], batched)
            assert_trees_close(single, one, rtol=1e-6, atol=1e-7)
    sparsities = [1 - float(sum(m.sum() for m in jax.tree.leaves(s.masks)))
                  / sum(math.prod(shape) for shape in TREES[0].values()) for s in states]
    if method.startswith("gmp"):  # the two targets really differ in the one program
        np.testing.assert_allclose(sparsities, [0.5, 0.5, 0.9, 0.9], atol=0.01)


@pytest.mark.parametrize(("method", "bad"), [
    ("gmp", GMPOptions(start_fraction=0.9, end_fraction=0.5)),
    ("gmp", GMPOptions(prune_every_updates=0)),
    ("set", SETOptions(drop_fraction=1.5)),
    ("rigl", RigLOptions(update_every_updates=-1)),
])
def test_options_without_a_schedule_are_refused(method, bad):
    # Refused by the one check of a network's methods (config validation calls it; the builders
    # do not check again).
    settings = NetworkMethodSettings(method, 0.5, "erk", TOTAL_UPDATES)
    with pytest.raises(ValueError, match="must|needs"):
        check_network(settings, MethodOptions(**{method: bad}))


@pytest.mark.parametrize(("scale", "prunes_at_step_2"), [(1.0, False), (0.5, True)])
def test_interval_scale_reaches_the_built_method(scale, prunes_at_step_2):
    """A network's interval scale multiplies its methods' ``*every_updates`` options."""
    options = MethodOptions(gmp=GMPOptions(prune_every_updates=4, start_fraction=0.0))
    network = NetworkMethodSettings("gmp", 0.5, "erk", total_updates=10, interval_scale=scale)
    setup = build_network(network, options)
    params = {"dense": {"kernel": jax.random.normal(jax.random.PRNGKey(0), (8, 8))}}
    tx = optax.adam(1e-3)
    state = create_net_state(params, tx, setup.method, jax.random.PRNGKey(1))
    state = setup.method.transform(state, jnp.asarray(2), jax.random.PRNGKey(2),
                                   MethodContext(optimizer=tx))
    assert bool(jnp.any(~state.masks["dense"]["kernel"])) == prunes_at_step_2
