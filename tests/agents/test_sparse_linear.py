"""The sparse kernels equal the masked dense computation: forward, input and weight gradients,
for random shapes, densities from 0.5 to 0.999 and batch sizes, under jit and vmap, with the
compiled extension and with its pure-JAX fallback."""

from __future__ import annotations

import shutil
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import given
from hypothesis import strategies as st

from mtrl_sparse.agents.sparse_linear import (
    active_mask,
    compress,
    kernels_available,
    sparse_matmul,
)
from support.kernels import KERNEL_OR_FALLBACK, needs_kernels

TOLERANCE = {"rtol": 2e-5, "atol": 2e-5}


def _drop_none(tree):
    """A nested dict without its None leaves (and the dicts they leave empty)."""
    if not isinstance(tree, dict):
        return tree
    kept = {k: _drop_none(v) for k, v in tree.items() if v is not None}
    return {k: v for k, v in kept.items() if not (isinstance(v, dict) and not v)}


def masked_problem(seed: int, batch: int, inputs: int, outputs: int, density: float):
    """A mask of about ``density``, weights zero outside it, inputs and an output cotangent."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    mask = jax.random.uniform(keys[0], (inputs, outputs)) < density
    w = jnp.where(mask, jax.random.normal(keys[1], (inputs, outputs)), 0.0)
    x = jax.random.normal(keys[2], (batch, inputs))
    cotangent = jax.random.normal(keys[3], (batch, outputs))
    return mask, w, x, cotangent


def products(x, w, mask, index, use_kernel, cotangent):
    """(y, dx, dw) of the sparse product and of the masked dense one, the gradients of
    ``sum(y * cotangent)``."""
    sparse = lambda x, w: sparse_matmul(x, w, index, use_kernel)
    dense = lambda x, w: x @ (w * mask)
    loss = lambda product: lambda x, w: jnp.sum(product(x, w) * cotangent)
    got = (jax.jit(sparse)(x, w), *jax.jit(jax.grad(loss(sparse), (0, 1)))(x, w))
    want = (dense(x, w), *jax.grad(loss(dense), (0, 1))(x, w))
    return got, want


def assert_masked_equal(got, want, mask, tolerance=TOLERANCE):
    """Outputs, input gradients and the weight gradients at the mask's entries agree."""
    y, dx, dw = got
    np.testing.assert_allclose(y, want[0], **tolerance)
    np.testing.assert_allclose(dx, want[1], **tolerance)
    np.testing.assert_allclose(np.where(mask, dw, 0.0), want[2], **tolerance)


def assert_indexed_network_computes_the_dense_one(net, weights, masks, index_vars, *inputs):
    """The network's output, gradients at the masks' entries (of ``sum(sin(output))``) and sown
    activations with ``index_vars`` (its ``SPARSE_INDEX`` variables) equal those without."""

    def outputs(extra):
        def loss(p):
            return jnp.sum(jnp.sin(net.apply({"params": p, **extra}, *inputs)))
        value, grads = jax.jit(jax.value_and_grad(loss))(weights)
        _, sown = net.apply({"params": weights, **extra}, *inputs, mutable=["intermediates"])
        return value, jax.tree.map(lambda g, m: g if m is None else g * m, grads, masks,
                                   is_leaf=lambda x: x is None), sown["intermediates"]

    for a, b in zip(jax.tree.leaves(outputs({})), jax.tree.leaves(outputs(index_vars)),
                    strict=True):
        np.testing.assert_allclose(a, b, **TOLERANCE)


def test_a_compiler_builds_the_extension():
    """Where the install could compile (a C++ compiler on the PATH), the kernels must be there:
    a silent fallback to the pure-JAX path would hide a broken build."""
    compiler = sysconfig.get_config_var("CXX") or "c++"
    if shutil.which(compiler.split()[0]) is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the install falls back to the pure-JAX path")
    assert kernels_available(), "a C++ compiler is present but the sparse kernels were not built"


@pytest.mark.parametrize("use_kernel", KERNEL_OR_FALLBACK)
# Shapes from a few sizes (each new shape compiles anew); masks, densities and values vary freely.
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([1, 7, 64]),
       inputs=st.sampled_from([1, 5, 48]), outputs=st.sampled_from([1, 9, 33]),
       density=st.floats(0.001, 0.5))
def test_forward_and_gradients_equal_the_masked_dense_computation(
        use_kernel, seed, batch, inputs, outputs, density):
    mask, w, x, cotangent = masked_problem(seed, batch, inputs, outputs, density)
    index = compress(mask, inputs * outputs)  # capacity padded past the active count
    assert bool(index.fits)
    got, want = products(x, w, mask, index, use_kernel, cotangent)
    assert_masked_equal(got, want, mask)
    if use_kernel:  # the kernels compute no gradient outside the mask
        assert np.all(np.asarray(got[2])[~np.asarray(mask)] == 0.0)


@needs_kernels
@pytest.mark.parametrize("density", [0.5, 0.2, 0.05, 0.01, 0.001])
def test_paper_sized_layers_at_every_density(density):
    mask, w, x, cotangent = masked_problem(1, 1280, 400, 400, density)
    index = compress(mask, int(mask.sum()))
    got, want = products(x, w, mask, index, True, cotangent)
    assert_masked_equal(got, want, mask, {"rtol": 1e-4, "atol": 1e-4})


@needs_kernels
def test_the_fallback_gives_the_kernels_numbers():
    mask, w, x, cotangent = masked_problem(2, 33, 40, 24, 0.1)
    index = compress(mask, 200)
    kernel, _ = products(x, w, mask, index, True, cotangent)
    fallback, _ = products(x, w, mask, index, False, cotangent)
    assert_masked_equal(kernel, (fallback[0], fallback[1], np.where(mask, fallback[2], 0)), mask)


@needs_kernels
def test_vmapped_runs_each_use_their_own_mask():
    problems = [masked_problem(seed, 16, 20, 12, density)
                for seed, density in ((3, 0.05), (4, 0.3), (5, 0.5))]
    masks, ws, xs = (jnp.stack([p[i] for p in problems]) for i in range(3))
    indices = jax.vmap(lambda m: compress(m, 120))(masks)

    def loss(x, w, index):
        return jnp.sum(jnp.tanh(sparse_matmul(x, w, index)))

    def dense_loss(x, w, mask):
        return jnp.sum(jnp.tanh(x @ (w * mask)))

    got = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1))))(xs, ws, indices)
    want = jax.vmap(jax.value_and_grad(dense_loss, (0, 1)))(xs, ws, masks)
    np.testing.assert_allclose(got[0], want[0], **TOLERANCE)
    np.testing.assert_allclose(got[1][0], want[1][0], **TOLERANCE)
    np.testing.assert_allclose(np.where(masks, got[1][1], 0.0), want[1][1], **TOLERANCE)


def test_an_index_above_its_density_limit_takes_the_dense_path():
    mask, w, x, cotangent = masked_problem(8, 9, 20, 10, 0.5)
    index = compress(mask, 200, max_density=0.1)
    assert bool(index.fits) and not bool(index.enabled)
    got, want = products(x, w, mask, index, True, cotangent)
    assert_masked_equal(got, want, mask)
    assert np.any(np.asarray(got[2])[~np.asarray(mask)] != 0.0)  # the dense path's x^T dy


def test_compress_inside_jit_after_a_mask_change():
    """An index rebuilt inside a compiled step (as at a method's event) describes the new mask."""
    mask, w, x, _ = masked_problem(6, 8, 30, 10, 0.2)
    capacity = 80

    @jax.jit
    def rebuild_and_apply(mask, w, x):
        pruned = mask & (jnp.abs(w) > 0.5)
        index = compress(pruned, capacity)
        return sparse_matmul(x, jnp.where(pruned, w, 0.0), index), active_mask(index, mask.shape)

    y, described = rebuild_and_apply(mask, w, x)
    pruned = np.asarray(mask & (jnp.abs(w) > 0.5))
    np.testing.assert_array_equal(described, pruned)
    np.testing.assert_allclose(y, x @ np.where(pruned, w, 0.0), **TOLERANCE)


def test_an_index_reports_a_mask_past_its_capacity():
    mask = jnp.ones((4, 5), bool)
    assert not bool(compress(mask, 19).fits)
    assert bool(compress(mask, 20).fits)


def test_sparse_matmul_is_float32_only():
    mask, w, x, _ = masked_problem(7, 2, 3, 4, 0.5)
    with pytest.raises(TypeError, match="float32"):
        sparse_matmul(x.astype(jnp.bfloat16), w, compress(mask, 12))


@pytest.mark.parametrize(("contract_all", "shape"), [
    (False, (16, 24)), (True, (256, 1, 1, 64)), (True, (256, 4, 4, 64))],
    ids=["dense", "dense_general_pooled_cnn", "dense_general_cnn"])
def test_masked_dense_computes_what_the_flax_layer_computes(contract_all, shape):
    """Without an index, MaskedDense is nn.Dense / nn.DenseGeneral: the same parameters, and the
    same outputs and gradients at the shapes of the networks' layers, bit for bit as nn.Dense.
    With ``contract_all`` it flattens the input and multiplies by the (flat, units) matrix: bit
    for bit nn.Dense on the flattened input and kernel, and DenseGeneral to float32 rounding
    (XLA's CPU backend computes the flat product on its fast matrix-product path, DenseGeneral's
    multi-axis contraction off it: the un-pooled PPO update about 1.2x faster; bench/
    ppo_update.py). Whole runs are guarded by the learning gate (tests/runs/
    test_learning_gate.py)."""
    from flax import linen as nn

    from mtrl_sparse.agents.networks import torch_linear_init
    from mtrl_sparse.agents.sparse_linear import MaskedDense

    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    flax_layer = (nn.DenseGeneral(384, axis=(1, 2, 3), kernel_init=torch_linear_init)
                  if contract_all else nn.Dense(384, kernel_init=torch_linear_init))
    ours = MaskedDense(384, torch_linear_init, contract_all=contract_all)
    theirs_vars, our_vars = (m.init(jax.random.PRNGKey(1), x) for m in (flax_layer, ours))

    def value_and_grads(layer, variables):
        return jax.jit(jax.value_and_grad(lambda v: jnp.sum(jnp.sin(layer.apply(v, x)))))(
            variables)

    want, got = value_and_grads(flax_layer, theirs_vars), value_and_grads(ours, our_vars)
    for a, b in zip(jax.tree.leaves(theirs_vars), jax.tree.leaves(our_vars), strict=True):
        np.testing.assert_array_equal(a, b)  # the same initial parameters
    if not contract_all:
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
            np.testing.assert_array_equal(a, b)
        return
    # Bit for bit what nn.Dense computes on the flattened input with the flattened kernel ...
    flat_x = x.reshape(shape[0], -1)
    flat_vars = jax.tree.map(lambda a: a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a,
                             our_vars)
    flat_dense = nn.Dense(384)
    flat_want = jax.jit(jax.value_and_grad(
        lambda v: jnp.sum(jnp.sin(flat_dense.apply(v, flat_x)))))(flat_vars)
    np.testing.assert_array_equal(flat_want[0], got[0])
    for a, b in zip(jax.tree.leaves(flat_want[1]), jax.tree.leaves(got[1]), strict=True):
        np.testing.assert_array_equal(a.reshape(-1), b.reshape(-1))
    # ... and DenseGeneral's multi-axis contraction to float32 rounding (summed in another order).
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_kernel", KERNEL_OR_FALLBACK)
@pytest.mark.parametrize(("x_feature_major", "y_feature_major"),
                         [(True, False), (False, True), (True, True)])
def test_feature_major_layouts_compute_the_same_product(use_kernel, x_feature_major,
                                                        y_feature_major):
    """Input given as (I, B) and/or output returned as (O, B): the same values and gradients
    as the batch-major product, in the other layout."""
    mask, w, x, cotangent = masked_problem(6, 37, 30, 20, 0.1)
    index = compress(mask, mask.size)

    def product(x, w):
        x_in = x.T if x_feature_major else x
        y = sparse_matmul(x_in, w, index, use_kernel, x_feature_major, y_feature_major)
        return y.T if y_feature_major else y

    loss = lambda product: lambda x, w: jnp.sum(product(x, w) * cotangent)
    got = (jax.jit(product)(x, w), *jax.jit(jax.grad(loss(product), (0, 1)))(x, w))
    _, want = products(x, w, mask, index, use_kernel, cotangent)
    assert_masked_equal(got, want, mask)


@pytest.mark.parametrize("arch", ["mh", "moe"])
@pytest.mark.parametrize("indexed", [("hidden_0", "hidden_1", "hidden_2", "heads"),
                                     ("hidden_1", "hidden_2"), ("hidden_0", "hidden_2")],
                         ids=["all", "middle", "apart"])
def test_networks_pass_activations_feature_major_between_indexed_layers(arch, indexed):
    """An MLP whose consecutive hidden layers compute through the kernels hands activations
    between them feature-major; outputs, gradients and the sown activations equal the dense
    network's."""
    from mtrl_sparse.agents.networks import feature_major_chain, multi_task_mlp
    from mtrl_sparse.agents.sparse_linear import SPARSE_INDEX, index_masks

    net = multi_task_mlp(arch, (24, 24, 16), 3, 2, False, 2, name="mlp")
    k_init, k_mask, k_x = jax.random.split(jax.random.PRNGKey(7), 3)
    features = jax.random.normal(k_x, (11, 5))
    task_ids = jnp.arange(11) % 3
    params = net.init(k_init, features, task_ids)["params"]
    masks = jax.tree_util.tree_map_with_path(
        lambda path, p: (jax.random.uniform(jax.random.fold_in(k_mask, len(str(path))), p.shape)
                         < 0.3) if path[-1].key == "kernel" and any(
                             getattr(k, "key", None) in indexed for k in path) else None,
        params)
    weights = jax.tree.map(lambda p, m: p if m is None else p * m, params, masks,
                           is_leaf=lambda x: x is None)
    index = index_masks({"params": masks}, 1.0)
    sparse_vars = {"params": weights, SPARSE_INDEX: _drop_none(index["params"])}

    assert_indexed_network_computes_the_dense_one(
        net, weights, masks, {SPARSE_INDEX: sparse_vars[SPARSE_INDEX]}, features, task_ids)

    class Probe(nn.Module):  # what feature_major_chain decides inside the network's scope
        @nn.compact
        def __call__(self):
            return feature_major_chain(self, ["hidden_0", "hidden_1", "hidden_2", "heads"], False)

    if arch == "mh":
        chain = Probe().apply({SPARSE_INDEX: sparse_vars[SPARSE_INDEX]})
        layers = ["hidden_0", "hidden_1", "hidden_2", "heads"]
        expected = [a in indexed and b in indexed
                    for a, b in zip(layers[:-1], layers[1:], strict=True)]
        assert chain == [*expected, False]


# ----------------------------------------------------------------------------- convolutions


def conv_problem(seed: int, batch: int, height: int, width: int, channels: int, outputs: int,
                 size: int, density: float):
    """A (size, size, C, O) mask of about ``density``, a kernel zero outside it, maps and an
    output cotangent."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    shape = (size, size, channels, outputs)
    mask = jax.random.uniform(keys[0], shape) < density
    kernel = jnp.where(mask, jax.random.normal(keys[1], shape), 0.0)
    x = jax.random.normal(keys[2], (batch, height, width, channels))
    cotangent = jax.random.normal(keys[3], (batch, height - size + 1, width - size + 1, outputs))
    return mask, kernel, x, cotangent


def conv_products(x, kernel, mask, index, cotangent):
    """(y, dx, dw) of ``sparse_conv`` and of the masked window product (what ``PatchConv``
    computes densely), the gradients of ``sum(y * cotangent)``."""
    from mtrl_sparse.agents.cnn import kernel_patches
    from mtrl_sparse.agents.sparse_linear import kernel_view, sparse_conv

    size = kernel.shape[0]
    sparse = lambda x, k: sparse_conv(x, k, index)
    dense = lambda x, k: kernel_patches(x, size) @ kernel_view(k * mask)
    loss = lambda conv: lambda x, k: jnp.sum(conv(x, k) * cotangent)
    got = (jax.jit(sparse)(x, kernel), *jax.jit(jax.grad(loss(sparse), (0, 1)))(x, kernel))
    want = (dense(x, kernel), *jax.grad(loss(dense), (0, 1))(x, kernel))
    return got, want


@needs_kernels
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([1, 3, 16]),
       map_shape=st.sampled_from([(2, 2), (7, 7), (6, 5), (4, 9)]),
       channels=st.sampled_from([1, 3, 16]), outputs=st.sampled_from([1, 8]),
       size=st.sampled_from([2, 3]), density=st.floats(0.001, 1.0))
def test_convolutions_on_the_grid_equal_the_masked_window_product(
        seed, batch, map_shape, channels, outputs, size, density):
    """Forward, input gradient and the weight gradient at the mask's entries of the direct
    convolution equal the window product's; no weight gradient outside the mask."""
    height, width = map_shape
    if min(height, width) < size:
        size = min(height, width)
    mask, kernel, x, cotangent = conv_problem(seed, batch, height, width, channels, outputs,
                                              size, density)
    from mtrl_sparse.agents.sparse_linear import kernel_view

    index = compress(kernel_view(mask), mask.size)
    got, want = conv_products(x, kernel, mask, index, cotangent)
    y, dx, dw = got
    np.testing.assert_allclose(y, want[0], **TOLERANCE)
    np.testing.assert_allclose(dx, want[1], **TOLERANCE)
    np.testing.assert_allclose(np.where(mask, dw, 0.0), want[2], **TOLERANCE)
    assert np.all(np.asarray(dw)[~np.asarray(mask)] == 0.0)


@needs_kernels
@pytest.mark.parametrize("density", [0.05, 0.5])
def test_a_convolution_index_above_its_density_limit_takes_the_dense_path(density):
    """Under a density limit the products branch at run time: both branches compute the
    window product's numbers."""
    from mtrl_sparse.agents.sparse_linear import kernel_view

    mask, kernel, x, cotangent = conv_problem(9, 4, 6, 6, 16, 32, 2, density)
    index = compress(kernel_view(mask), mask.size, max_density=0.1)
    assert bool(index.enabled) == (density < 0.1)
    got, want = conv_products(x, kernel, mask, index, cotangent)
    for a, b in zip(got[:2], want[:2], strict=True):
        np.testing.assert_allclose(a, b, **TOLERANCE)
    np.testing.assert_allclose(np.where(mask, got[2], 0.0), want[2], **TOLERANCE)


@needs_kernels
def test_vmapped_convolutions_each_use_their_own_mask():
    from mtrl_sparse.agents.cnn import kernel_patches
    from mtrl_sparse.agents.sparse_linear import kernel_view, sparse_conv

    problems = [conv_problem(seed, 5, 6, 6, 8, 4, 2, density)
                for seed, density in ((3, 0.05), (4, 0.3), (5, 1.0))]
    masks, kernels, xs = (jnp.stack([p[i] for p in problems]) for i in range(3))
    indices = jax.vmap(lambda m: compress(kernel_view(m), m.size))(masks)
    loss = lambda x, k, index: jnp.sum(jnp.tanh(sparse_conv(x, k, index)))
    dense_loss = lambda x, k, m: jnp.sum(jnp.tanh(kernel_patches(x, 2) @ kernel_view(k * m)))
    got = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1))))(xs, kernels, indices)
    want = jax.vmap(jax.value_and_grad(dense_loss, (0, 1)))(xs, kernels, masks)
    np.testing.assert_allclose(got[0], want[0], **TOLERANCE)
    np.testing.assert_allclose(got[1][0], want[1][0], **TOLERANCE)
    np.testing.assert_allclose(np.where(masks, got[1][1], 0.0), want[1][1], **TOLERANCE)


@needs_kernels
@pytest.mark.parametrize("indexed", [("conv_0", "conv_1", "conv_2", "head_hidden", "heads"),
                                     ("conv_1", "head_hidden")], ids=["all", "some"])
def test_the_cnn_chains_its_convolutions_on_one_grid_when_all_are_indexed(indexed):
    """With every convolution indexed the CNN computes them on one channel-major grid (the
    compiled convolution appears once per layer); with some, each indexed one computes directly
    and the others as window products. Outputs, gradients at the masks' entries and the sown
    activations equal the dense network's."""
    from mtrl_sparse.agents.cnn import CNNTaskNetwork
    from mtrl_sparse.agents.sparse_linear import CONV_GATHER_TARGET, SPARSE_INDEX, index_masks

    net = CNNTaskNetwork(num_tasks=3, out_dim=7, pooling=False)
    k_init, k_mask, k_image = jax.random.split(jax.random.PRNGKey(11), 3)
    image = jax.random.randint(k_image, (9, 7, 7, 3), 0, 10).astype(jnp.float32)
    task_ids = jnp.arange(9) % 3
    params = net.init(k_init, image, task_ids)["params"]
    masks = jax.tree_util.tree_map_with_path(
        lambda path, p: (jax.random.uniform(jax.random.fold_in(k_mask, p.size), p.shape) < 0.2)
        if path[-1].key == "kernel" and path[-2].key in indexed else None, params)
    weights = jax.tree.map(lambda p, m: p if m is None else p * m, params, masks,
                           is_leaf=lambda x: x is None)
    index_vars = {SPARSE_INDEX: _drop_none(index_masks({"params": masks}, 1.0)["params"])}

    assert_indexed_network_computes_the_dense_one(net, weights, masks, index_vars, image,
                                                  task_ids)
    program = jax.jit(lambda p: net.apply({"params": p, **index_vars}, image, task_ids)).lower(
        weights).as_text(debug_info=True)
    convs_indexed = sum(name.startswith("conv") for name in indexed)
    assert program.count(CONV_GATHER_TARGET) == convs_indexed
    assert ("trunk.grid_chain" in program) == (convs_indexed == 3)
