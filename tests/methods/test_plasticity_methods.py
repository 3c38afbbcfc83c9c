"""Reset and ReDo (mtrl_sparse.methods.reset and .redo), tested as properties.

Each transform runs on a real tiny flax network (a ``MultiHeadMLP``, or a ``TwinCritic`` with
LayerNorm), dense or with random masks (some neurons cut off entirely), whose context gives real
``activations`` and ``neuron_layers``, and on a real optax state (clip -> Adam -> learning rate)
whose moments are nonzero. Steps are drawn on and next to event boundaries; the sparsity, keys,
batch and the neurons made dormant are traced data (one compilation per method configuration,
network and masking). After every call, whatever the method:
- masks are unchanged (bool arrays on the kernels, None elsewhere);
- params == params * masks, and Adam's mu and nu are zero wherever a weight is masked or was
  re-initialised or zeroed; every other weight and moment is bit-identical.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mtrl_sparse.agents.net_state import (
    MethodContext,
    NetState,
    apply_gradients,
    apply_masks,
    create_net_state,
    default_maskable,
    masked_params,
)
from mtrl_sparse.agents.networks import MultiHeadMLP, NeuronLayer, TwinCritic, mlp_neuron_layers
from mtrl_sparse.methods.base import NetworkMethodSettings
from mtrl_sparse.methods.compose import compose
from mtrl_sparse.methods.network import check_network
from mtrl_sparse.methods.redo import ReDoOptions, redo
from mtrl_sparse.methods.registry import MethodOptions
from mtrl_sparse.methods.reset import ResetOptions, reset
from mtrl_sparse.methods.static import static_sparse
from mtrl_sparse.methods.topology import no_masks
from support.invariants import (
    assert_mask_invariant,
    assert_trees_close,
    assert_trees_equal,
    stack_trees,
    trees_equal,
)

TX = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(),
                 optax.scale_by_learning_rate(1e-3))
BATCH = 16
SETTINGS = NetworkMethodSettings("plasticity", 0.0, "erk", 1000)


class Net(NamedTuple):
    """A tiny network: its module, the sizes of its float inputs, its tasks, its neuron layers and
    their widths."""

    module: Any
    input_dims: tuple[int, ...]
    num_tasks: int
    neuron_layers: tuple[NeuronLayer, ...]
    widths: tuple[int, ...]


NETS = {
    "mlp": Net(MultiHeadMLP((8, 8), 3, 2), (5,), 3, mlp_neuron_layers((), 2), (8, 8)),
    "twin_ln": Net(TwinCritic((6, 5), 2, layer_norm=True), (3, 2), 2,
                   mlp_neuron_layers(("q1",), 2) + mlp_neuron_layers(("q2",), 2), (6, 5, 6, 5)),
}
MAX_NEURONS = 32  # room for every neuron of either network
# (network, masked): the dense case on the plain MLP; masks (Bernoulli) on both.
NETWORKS = (("mlp", False), ("mlp", True), ("twin_ln", True))

RESET_CONFIGS = (
    ResetOptions(every_updates=10, max_resets=2),
    ResetOptions(every_updates=7, max_resets=3, layers=("hidden_0", "heads")),
)
REDO_CONFIGS = (
    ReDoOptions(every_updates=10, tau=0.001),
    ReDoOptions(every_updates=6, tau=0.1),  # some neurons dormant without a perturbation
    ReDoOptions(every_updates=10, tau=0.0),  # only neurons that never fire: not the tiny ones
)
# A neuron is kept, made tiny (its score ~1e-6 of the layer mean), dead (its ReLU never fires),
# loud (+100 on its bias: it dominates the layer mean) or cut (loud, and in a masked network all
# its incoming weights masked: not alive, so it must not count in the layer mean). Its incoming
# column and bias are scaled and shifted, or, behind a LayerNorm, the norm's scale and bias.
KEEP, TINY, DEAD, LOUD, CUT = 0, 1, 2, 3, 4
FACTORS = jnp.array([1.0, 1e-6, 0.0, 1.0, 1.0], jnp.float32)
SHIFTS = jnp.array([0.0, 0.0, -1.0, 100.0, 100.0], jnp.float32)


# ----------------------------------------------------------------------------- nested dicts


def get(tree: Any, path: tuple) -> Any:
    for key in path:
        if tree is None:
            return None
        tree = tree[key]
    return tree


def put(tree: dict, path: tuple, value: Any) -> dict:
    if not path:
        return value
    return {**tree, path[0]: put(tree[path[0]], path[1:], value)}


def flat(tree: Any) -> dict[tuple, np.ndarray | None]:
    """{path of key names: numpy leaf (None kept)}."""
    items, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    return {tuple(k.key for k in path): None if x is None else np.asarray(x) for path, x in items}


# ----------------------------------------------------------------------------- the network


def inputs_of(net: Net, key: jax.Array, batch: int = BATCH) -> tuple[jax.Array, ...]:
    keys = jax.random.split(key, len(net.input_dims) + 1)
    floats = tuple(jax.random.normal(k, (batch, d))
                   for k, d in zip(keys[:-1], net.input_dims, strict=True))
    return (*floats, jax.random.randint(keys[-1], (batch,), 0, net.num_tasks))


def init_params(net: Net, key: jax.Array) -> dict:
    return net.module.init(key, *inputs_of(net, jax.random.PRNGKey(0), 1))


def activations(net: Net, weights: dict, inputs: tuple) -> dict:
    """The sown hidden activations, keyed like ``NeuronLayer.activation`` (as SAC's)."""
    _, variables = net.module.apply(weights, *inputs, mutable=["intermediates"])
    return jax.tree.map(lambda sown: sown[0], variables["intermediates"],
                        is_leaf=lambda x: isinstance(x, tuple))


def context(net: Net, inputs: tuple) -> MethodContext:
    return MethodContext(optimizer=TX, init_params=functools.partial(init_params, net),
                         activations=lambda w: activations(net, w, inputs),
                         neuron_layers=tuple(net.neuron_layers))


def layer_kinds(net: Net, kinds: jax.Array) -> list[tuple[NeuronLayer, jax.Array]]:
    """``kinds`` (MAX_NEURONS,) int read layer by layer: (layer, kinds of its neurons)."""
    out, offset = [], 0
    for layer, width in zip(net.neuron_layers, net.widths, strict=True):
        out.append((layer, kinds[offset:offset + width]))
        offset += width
    return out


def cut(net: Net, masks: dict, kinds: jax.Array) -> dict:
    """Mask all incoming weights of the CUT neurons."""
    for layer, kind in layer_kinds(net, kinds):
        path = (*layer.incoming, "kernel")
        masks = put(masks, path, get(masks, path) & (kind != CUT))
    return masks


def perturb(net: Net, params: dict, kinds: jax.Array) -> dict:
    """Make the neurons TINY, DEAD, LOUD or CUT as ``kinds`` says, keeping the masks valid (a
    masked weight scaled stays zero)."""
    for layer, kind in layer_kinds(net, kinds):
        norm = (*layer.incoming[:-1], layer.incoming[-1].replace("hidden", "norm"))
        target, weight = (norm, "scale") if norm[-1] in get(params, norm[:-1]) else (
            layer.incoming, "kernel")
        params = put(params, (*target, weight), get(params, (*target, weight)) * FACTORS[kind])
        params = put(params, (*target, "bias"),
                     get(params, (*target, "bias")) * FACTORS[kind] + SHIFTS[kind])
    return params


def random_grads(params: dict, key: jax.Array) -> dict:
    """Standard normal gradients congruent with ``params`` (one draw, sliced: fast to compile)."""
    leaves, treedef = jax.tree.flatten(params)
    draw = jax.random.normal(key, (sum(p.size for p in leaves),))
    offsets = np.cumsum([0] + [p.size for p in leaves])
    return jax.tree.unflatten(treedef, [draw[o:o + p.size].reshape(p.shape)
                                        for o, p in zip(offsets, leaves, strict=False)])


def random_masks(params: dict, sparsity: jax.Array, key: jax.Array) -> dict:
    """Bernoulli(1 - sparsity) masks on the default maskable leaves (the kernels), None elsewhere;
    a neuron may lose all its incoming weights (it is then not alive)."""
    leaves, treedef = jax.tree.flatten(params)
    flags = jax.tree.leaves(default_maskable(params))
    draw = jax.random.uniform(key, (sum(p.size for p in leaves),))
    offsets = np.cumsum([0] + [p.size for p in leaves])
    return jax.tree.unflatten(treedef, [
        draw[o:o + p.size].reshape(p.shape) >= sparsity if f else None
        for o, p, f in zip(offsets, leaves, flags, strict=False)])


@functools.cache
def programs(net_name: str, masked: bool):
    """Jitted ``new_state(sparsity, key, kinds)``, a fresh network with masks, and ``prepare(state,
    train_key, kinds, key, inputs_key)``: one random optimizer step (nonzero moments), then
    ``perturb``; returns the state (both without method state) with what the checks compare to:
    a batch drawn with ``inputs_key``, the fresh variables ``init_params(key)`` and the
    activations of the prepared state on the batch."""
    net = NETS[net_name]

    def new_state(sparsity: jax.Array, key: jax.Array, kinds: jax.Array) -> NetState:
        k_params, k_masks = jax.random.split(key)
        params = init_params(net, k_params)
        masks = no_masks(params)
        if masked:
            masks = cut(net, random_masks(params, sparsity, k_masks), kinds)
        params = apply_masks(params, masks)
        return NetState(params=params, masks=masks, opt_state=TX.init(params))

    def prepare(state: NetState, train_key: jax.Array, kinds: jax.Array, key: jax.Array,
                inputs_key: jax.Array):
        grads = apply_masks(random_grads(state.params, train_key), state.masks)
        state = apply_gradients(state, grads, TX)
        state = state.replace(params=perturb(net, state.params, kinds))
        inputs = inputs_of(net, inputs_key)
        return (state, inputs, init_params(net, key),
                activations(net, masked_params(state), inputs))

    return jax.jit(new_state), jax.jit(prepare)


def build(method: str, config: int):
    if method == "reset":
        return reset(SETTINGS, RESET_CONFIGS[config])
    return redo(SETTINGS, REDO_CONFIGS[config])


@functools.cache
def transform_program(method: str, config: int, net_name: str, masked: bool):
    """Jitted transform(state, step, key, inputs) of one method configuration on one network."""
    del masked  # a key of the cache: the programs differ
    net, built = NETS[net_name], build(method, config)

    def transform(state: NetState, step: jax.Array, key: jax.Array, inputs: tuple) -> NetState:
        return built.transform(state, step, key, context(net, inputs))

    return jax.jit(transform)


def run_steps(method, config, net_name, masked, sparsity, seed, steps, kinds):
    """Yield (step, before, after, fresh, activations) at each step: an optimizer step and the
    perturbation, then the transform."""
    new_state, prepare = programs(net_name, masked)
    transform = transform_program(method, config, net_name, masked)
    assert len(steps) <= MAX_STEPS
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 + 3 * MAX_STEPS)  # one shape: compiled once
    kinds = jnp.asarray(kinds, jnp.int32)
    state = new_state(jnp.float32(sparsity), keys[0], kinds)
    method_state = build(method, config).init(state.params, None, keys[1])[1]
    for i, step in enumerate(steps):
        k_train, k_method, k_inputs = keys[2 + 3 * i: 5 + 3 * i]
        state, inputs, fresh, acts = prepare(state, k_train, kinds, k_method, k_inputs)
        state = state.replace(method_state=method_state)
        after = transform(state, jnp.int32(step), k_method, inputs)
        yield step, state, after, flat(fresh), acts
        state, method_state = after.replace(method_state=None), after.method_state


# ----------------------------------------------------------------------------- checks


class Arrays(NamedTuple):
    """Per parameter path (numpy): weights, mask (None if unmasked), Adam mu and nu."""

    w: dict
    mask: dict
    mu: dict
    nu: dict


def arrays(state: NetState) -> Arrays:
    adam = state.opt_state[1]
    return Arrays(flat(state.params), flat(state.masks), flat(adam.mu), flat(adam.nu))


def check_invariants(before: NetState, after: NetState) -> tuple[Arrays, Arrays]:
    """Masks unchanged, on the kernels only (of a masked network); the mask invariant; the
    non-moment optimizer state untouched."""
    assert_trees_equal(before.masks, after.masks)
    assert_mask_invariant(after)
    old, new = arrays(before), arrays(after)
    masked = any(m is not None for m in new.mask.values())
    for path, mask in new.mask.items():
        assert (mask is not None) == (masked and path[-1] == "kernel")
    np.testing.assert_array_equal(before.opt_state[1].count, after.opt_state[1].count)
    return old, new


def check_touched(old: Arrays, new: Arrays, expected: dict, touched: dict) -> None:
    """Params equal ``expected``; mu and nu zero where ``touched``, bit-identical elsewhere."""
    for path in new.w:
        assert np.array_equal(new.w[path], expected[path]), path
        t = touched[path]
        for moment in ("mu", "nu"):
            a, b = getattr(new, moment)[path], getattr(old, moment)[path]
            assert not a[t].any(), (path, moment)
            assert np.array_equal(a[~t], b[~t]), (path, moment)


def steps_near(every: int, pairs: list[tuple[int, int]]) -> list[int]:
    return [max(1, k * every + d) for k, d in pairs]


MAX_STEPS = 8
NEAR = st.tuples(st.integers(0, 5), st.sampled_from((-1, 0, 1)))
NEAR_OFTEN_ON = st.tuples(st.integers(0, 5), st.sampled_from((0, -1, 0, 1)))


# ----------------------------------------------------------------------------- reset


@settings(deadline=None)
@given(config=st.sampled_from(range(len(RESET_CONFIGS))), network=st.sampled_from(NETWORKS),
       sparsity=st.floats(0.3, 0.9), seed=st.integers(0, 2**16), near=st.lists(NEAR, max_size=3))
def test_reset_reinitialises_the_named_layers_at_most_max_resets_times(
        config, network, sparsity, seed, near):
    options = RESET_CONFIGS[config]
    every = options.every_updates
    events = {k * every for k in range(1, options.max_resets + 1)}
    # Every multiple up to one past the last reset, and steps on and next to multiples.
    steps = sorted(set(steps_near(every, near)) | events | {(options.max_resets + 1) * every})
    fired = 0
    for step, before, after, fresh, _ in run_steps("reset", config, *network, sparsity, seed,
                                                   steps, [KEEP] * MAX_NEURONS):
        old, new = check_invariants(before, after)
        if step not in events:
            assert_trees_equal(before, after)
            continue
        fired += 1
        assert int(after.method_state["resets"]) == int(before.method_state["resets"]) + 1
        expected, touched = {}, {}
        for path, w in old.w.items():
            chosen = any(name in options.layers for name in path[:-1])
            mask = old.mask[path]
            if chosen:
                expected[path] = fresh[path] if mask is None else np.where(mask, fresh[path], 0)
            else:
                expected[path] = w
            touched[path] = np.full(w.shape, chosen)
        check_touched(old, new, expected, touched)
        for path in touched:  # the re-initialised kernels really changed
            if touched[path].all() and path[-1] == "kernel" and old.w[path].any():
                assert not np.array_equal(new.w[path], old.w[path])
    assert fired == options.max_resets
    assert int(after.method_state["resets"]) == options.max_resets


def test_reset_with_max_resets_zero_never_fires():
    method = reset(SETTINGS, ResetOptions(every_updates=1, max_resets=0))
    new_state, prepare = programs("mlp", False)
    net = NETS["mlp"]
    state = new_state(jnp.float32(0.0), jax.random.PRNGKey(0), jnp.zeros(MAX_NEURONS, jnp.int32))
    key = jax.random.PRNGKey(1)
    state = prepare(state, key, jnp.zeros(MAX_NEURONS, jnp.int32), key, key)[0]
    state = state.replace(method_state=method.init(state.params, None, jax.random.PRNGKey(2))[1])
    inputs = inputs_of(net, jax.random.PRNGKey(3))
    transform = jax.jit(lambda s, t: method.transform(s, t, jax.random.PRNGKey(4),
                                                      context(net, inputs)))
    for step in (0, 1, 2, 100_000):
        assert_trees_equal(state, transform(state, jnp.int32(step)))


def test_reset_of_no_existing_module_is_refused_at_trace_time():
    net = NETS["twin_ln"]
    state = programs("twin_ln", True)[0](jnp.float32(0.5), jax.random.PRNGKey(0),
                                         jnp.zeros(MAX_NEURONS, jnp.int32))
    method = reset(SETTINGS, ResetOptions(every_updates=10, layers=("head", "output")))
    state = state.replace(method_state=method.init(state.params, None, jax.random.PRNGKey(1))[1])
    inputs = inputs_of(net, jax.random.PRNGKey(2))
    with pytest.raises(ValueError, match=r"name no module.*'heads'.*'q1'"):
        jax.jit(lambda s: method.transform(s, jnp.int32(10), jax.random.PRNGKey(3),
                                           context(net, inputs)))(state)


# ----------------------------------------------------------------------------- redo


def expected_dormant(acts: dict, masks: dict, layers, tau: float) -> tuple[list, list, bool]:
    """(dormant, alive) per layer by ReDo's definition, in float64; and whether some alive score
    lies so close to tau that float32 rounding could decide it (the example is then skipped)."""
    dormant, alive, ambiguous = [], [], False
    for layer in layers:
        h = np.asarray(get(acts, layer.activation), np.float64)
        kernel_mask = get(masks, (*layer.incoming, "kernel"))
        a = np.ones(h.shape[1], bool) if kernel_mask is None else np.asarray(kernel_mask).any(0)
        mean_abs = np.abs(h).mean(axis=0)
        layer_mean = mean_abs[a].mean() if a.any() else 0.0
        scores = mean_abs / layer_mean if layer_mean > 0 else np.zeros_like(mean_abs)
        ambiguous |= tau > 0 and bool((a & (np.abs(scores - tau) <= 1e-3 * tau)).any())
        dormant.append(a & (scores <= tau))
        alive.append(a)
    return dormant, alive, ambiguous


def redo_expectation(old: Arrays, fresh: dict, layers, dormant) -> tuple[dict, dict]:
    """Recycling written out in numpy, layer by layer: (expected params, touched positions)."""
    expected = {path: w.copy() for path, w in old.w.items()}
    touched = {path: np.zeros(w.shape, bool) for path, w in old.w.items()}
    for layer, d in zip(layers, dormant, strict=True):
        for leaf in ("kernel", "bias"):
            path = (*layer.incoming, leaf)
            mask = old.mask[path]
            new = fresh[path] if mask is None else np.where(mask, fresh[path], 0)
            expected[path][..., d] = new[..., d]
            touched[path][..., d] = True
        path = (*layer.outgoing, "kernel")
        expected[path][d, :] = 0
        touched[path][d, :] = True
    return expected, touched


@settings(deadline=None)
@given(config=st.sampled_from(range(len(REDO_CONFIGS))), network=st.sampled_from(NETWORKS),
       sparsity=st.floats(0.3, 0.9), seed=st.integers(0, 2**16),
       near=st.lists(NEAR_OFTEN_ON, min_size=2, max_size=2),
       kinds=st.lists(st.sampled_from((KEEP, KEEP, KEEP, TINY, DEAD, LOUD, CUT)),
                      min_size=MAX_NEURONS, max_size=MAX_NEURONS),
       dead_layer=st.integers(-1, 3))
def test_redo_recycles_exactly_the_dormant_neurons(
        config, network, sparsity, seed, near, kinds, dead_layer):
    options, layers, kinds = REDO_CONFIGS[config], NETS[network[0]].neuron_layers, list(kinds)
    widths = NETS[network[0]].widths
    if 0 <= dead_layer < len(widths):  # a layer whose neurons all never fire
        start = sum(widths[:dead_layer])
        kinds[start:start + widths[dead_layer]] = [DEAD] * widths[dead_layer]
    steps = sorted(steps_near(options.every_updates, near))
    for step, before, after, fresh, acts in run_steps("redo", config, *network, sparsity, seed,
                                                      steps, kinds):
        old, new = check_invariants(before, after)
        if step % options.every_updates != 0:
            assert_trees_equal(before, after)
            continue
        dormant, alive, ambiguous = expected_dormant(acts, before.masks, layers, options.tau)
        assume(not ambiguous)
        expected, touched = redo_expectation(old, fresh, layers, dormant)
        check_touched(old, new, expected, touched)  # LayerNorms included: left alone
        recycled = sum(int(d.sum()) for d in dormant)
        state_before, state = before.method_state, after.method_state
        assert int(state["recycled_last"]) == recycled
        assert int(state["recycled_total"]) == int(state_before["recycled_total"]) + recycled
        np.testing.assert_allclose(state["dormant_fraction_last"],
                                   recycled / max(sum(int(a.sum()) for a in alive), 1),
                                   rtol=1e-6)
        if 0 <= dead_layer < len(widths):  # every alive neuron of that layer was recycled
            np.testing.assert_array_equal(dormant[dead_layer], alive[dead_layer])


# ----------------------------------------------------------------------------- both


@pytest.mark.parametrize("method", ["reset", "redo"])
def test_vmapped_over_states_and_keys_equals_separate_calls(method):
    # 2 states x 2 keys in one program, the step shared (unbatched): the event stays a real
    # branch (a cond in the program) and every run equals its own separate call.
    net_name, masked = "twin_ln", True
    built = build(method, 0)
    new_state, prepare = programs(net_name, masked)
    transform = transform_program(method, 0, net_name, masked)
    kinds = jnp.asarray(([KEEP, TINY, DEAD] * MAX_NEURONS)[:MAX_NEURONS], jnp.int32)
    keys = [jax.random.PRNGKey(10), jax.random.PRNGKey(11)]
    states = []
    for seed in (0, 1):
        state, inputs, _, _ = prepare(new_state(jnp.float32(0.6), jax.random.PRNGKey(seed), kinds),
                                      jax.random.PRNGKey(5 + seed), kinds, keys[0], keys[0])
        states.append(state.replace(method_state=built.init(state.params, None, keys[0])[1]))
    singles = [s for s in states for _ in keys]
    keys = keys * 2

    vmapped = jax.jit(jax.vmap(transform, in_axes=(0, None, 0, None)))
    batched = stack_trees(singles)
    assert "cond" in str(jax.make_jaxpr(vmapped)(batched, jnp.int32(10), stack_trees(keys),
                                                 inputs))
    for step in (9, 10, 11, 20):
        batched = vmapped(batched, jnp.int32(step), stack_trees(keys), inputs)
        singles = [transform(s, jnp.int32(step), k, inputs)
                   for s, k in zip(singles, keys, strict=True)]
        for i, one in enumerate(singles):
            row = jax.tree.map(lambda x, i=i: x[i], batched)
            assert_trees_close(one, row, rtol=1e-6, atol=1e-7)
    counter = "resets" if method == "reset" else "recycled_total"
    assert all(int(s.method_state[counter]) > 0 for s in singles)


@pytest.mark.parametrize("method", ["reset", "redo"])
def test_composes_with_a_sparsity_method(method):
    # static+reset / static+redo: the masks are the sparsity method's and are kept; the method
    # state of each member lives under its name.
    net = NETS["mlp"]
    composed = compose({"static": static_sparse(0.7, "uniform"), method: build(method, 0)})
    kinds = jnp.asarray(([KEEP, DEAD] * MAX_NEURONS)[:MAX_NEURONS], jnp.int32)
    inputs = inputs_of(net, jax.random.PRNGKey(3))

    @jax.jit
    def run(key: jax.Array) -> tuple[NetState, NetState]:
        k_params, k_masks, k_grads, k_method = jax.random.split(key, 4)
        state = create_net_state(init_params(net, k_params), TX, composed, k_masks)
        state = apply_gradients(state, apply_masks(random_grads(state.params, k_grads),
                                                   state.masks), TX)
        state = state.replace(params=perturb(net, state.params, kinds))  # dormant neurons
        return state, composed.transform(state, jnp.int32(10), k_method, context(net, inputs))

    before, after = run(jax.random.PRNGKey(0))
    assert set(after.method_state) == {"static", method}
    kernel_masks = [m for m in jax.tree.leaves(before.masks) if m is not None]
    assert kernel_masks and not all(bool(m.all()) for m in kernel_masks)
    check_invariants(before, after)
    assert not trees_equal(before.params, after.params)
    np.testing.assert_array_equal(after.method_state["static"]["target_sparsity"],
                                  np.float32(0.7))


@pytest.mark.parametrize(("method", "bad"), [
    ("reset", ResetOptions(every_updates=0)),
    ("reset", ResetOptions(max_resets=-1)),
    ("reset", ResetOptions(layers=())),
    ("reset", ResetOptions(layers="heads")),
    ("redo", ReDoOptions(every_updates=-5)),
    ("redo", ReDoOptions(tau=-0.1)),
    ("redo", ReDoOptions(tau=1.0)),
])
def test_options_without_a_schedule_are_refused(method, bad):
    # Refused by the one check of a network's methods (config validation calls it; the builders
    # do not check again).
    with pytest.raises(ValueError, match="must"):
        check_network(dataclasses.replace(SETTINGS, name=method), MethodOptions(**{method: bad}))
