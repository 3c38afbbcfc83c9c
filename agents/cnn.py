"""MiniGrid networks: a small CNN trunk and two-layer heads per task (PPO's actor and critic).

Settings of Todorov et al. 2025 ("Sparsity-Driven Plasticity in Multi-Task Reinforcement
Learning", Table 2): Conv2D channels [16, 32, 64] with 2x2 kernels and activations [ReLU, ReLU,
Tanh]; per task two linear layers of 128 hidden units with output activations [Tanh, Linear].
What the paper leaves unstated follows the common MiniGrid actor-critic convention: no padding
and a 2x2 max-pool after the first convolution (an option), so that a 7x7x3 image gives a
1x1x64 = 64-d embedding. The observation is the raw integer image as float; the task id is read
by the heads only.

Every weight is a Flax ``kernel`` leaf, so every one is maskable (convolution kernels included),
and every hidden layer is a ``NeuronLayer`` that neuron-level methods (ReDo) can recycle. Those
methods zero a neuron's outgoing weights as the rows ``[..., i, :]`` of the next kernel, so every
kernel that reads a layer keeps that layer's units on its axis -2:
- a convolution kernel (kh, kw, C_in, C_out) reads the previous layer's channels on axis -2;
- the first head layer contracts the trunk's feature map (h, w, C) with a kernel kept in shape
  (h, w, C, T * U) (the same function as flattening, then a dense layer), so the last conv's
  channels stay on axis -2 whatever the map size (1x1 with pooling, 4x4 without);
- the per-task output layer reads the T * U head units through a (T * U, O) kernel.
``mtrl_sparse.agents.networks.check_neuron_layers`` asserts this when an agent is built.

Initialisation as PyTorch's layers (uniform in +-1/sqrt(fan_in), fan_in of one task's layer for
the heads), biases at zero.

Architectures (``mtrl_sparse.agents.networks.Architecture``): ``mh`` is the above, one CNN
``trunk`` per network. ``moe`` / ``moore`` replace the trunk with k CNNs ``expert_0 ..
expert_{k-1}`` of the same shape, each on the image alone; their flattened feature maps (k
vectors of d = h * w * 64) are mixed per task by the linear ``task_encoder`` (orthonormalised
first for ``moore``), ``tanh`` of the mix is the d-vector the task heads read (the head's
kernel is then (d, T * U)). Each expert's convolutions but the last are neuron layers; the last
one's channels are mixed across experts, so no single kernel reads them.

Shapes: ``B`` batch, ``T`` tasks, ``U`` hidden units of one task's head, ``O`` outputs of one
head, ``A`` actions, ``k`` experts, ``d`` representation size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtrl_sparse.agents.networks import (
    ARCHITECTURES,
    REPRESENTATION_OUT,
    TASK_ENCODER,
    Architecture,
    NeuronLayer,
    mix_experts,
    task_encoder,
    task_one_hot,
    torch_linear_init,
)
from mtrl_sparse.agents.sparse_linear import (
    MaskedDense,
    from_grid,
    grid_conv,
    has_index,
    kernel_product,
    kernels_available,
    module_index,
    sparse_conv,
    to_grid,
)

CONV_ACTIVATIONS = (nn.relu, nn.relu, nn.tanh)
"""Activation after each convolution (Table 2)."""


def per_task_torch_init(num_tasks: int) -> nn.initializers.Initializer:
    """Initialiser of a stacked (T * U, O) kernel: PyTorch's ``nn.Linear(U, O)`` init per task."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        bound = 1.0 / jnp.sqrt(shape[0] // num_tasks)
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def kernel_patches(x: jax.Array, size: int) -> jax.Array:
    """(B, H, W, C) -> (B, H - size + 1, W - size + 1, size * size * C): each output position's
    ``size`` x ``size`` input window, flattened in the order of a (kh, kw, C, ...) kernel."""
    height, width = x.shape[1] - size + 1, x.shape[2] - size + 1
    return jnp.concatenate([x[:, i:i + height, j:j + width]
                            for i in range(size) for j in range(size)], axis=-1)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H // 2, W // 2, C): max over non-overlapping 2x2 windows (an odd last
    row or column is dropped, as a VALID pool does)."""
    batch, height, width, channels = x.shape
    x = x[:, :height // 2 * 2, :width // 2 * 2]
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


class PatchConv(nn.Module):
    """A VALID, stride-1 convolution computed as one matrix product over the input's windows.

    The same function and parameters as ``nn.Conv(features, (size, size), padding="VALID")``
    (``kernel`` (size, size, C_in, C_out), ``bias`` (C_out)), so masks and checkpoints see a
    convolution kernel; written as windows @ kernel because XLA's CPU convolutions on these tiny
    maps are about three times slower inside PPO's minibatch loop (bench/ppo_minigrid.py).
    With a sparse index (sparse compute) and the compiled kernels, it computes directly on the
    map with the active weights only (``sparse_conv``: no window array), and with
    ``grid`` = ((B, H, W), (h, w)) it takes and returns the channel-major grid of ``grid_conv``
    instead, its outputs valid on the top-left (h, w) of each map.
    (B, H, W, C_in) -> (B, H - size + 1, W - size + 1, C_out); with ``grid``:
    (C_in, H * W * B) -> (C_out, H * W * B).
    """

    features: int
    size: int = 2

    @nn.compact
    def __call__(self, x: jax.Array,
                 grid: tuple[tuple[int, int, int], tuple[int, int]] | None = None) -> jax.Array:
        channels = x.shape[0] if grid else x.shape[-1]
        kernel = self.param("kernel", torch_linear_init,
                            (self.size, self.size, channels, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        index = module_index(self)
        if grid:
            return grid_conv(x, kernel, index, *grid) + bias[:, None]
        if index is not None and kernels_available():
            return sparse_conv(x, kernel, index) + bias
        windows = kernel_patches(x, self.size)
        return kernel_product(self, windows, kernel) + bias


class MiniGridCNN(nn.Module):
    """Conv 16 (2x2, VALID) ReLU -> [MaxPool 2x2] -> Conv 32 (2x2) ReLU -> Conv 64 (2x2) Tanh.

    (B, H, W, C) image -> (B, h, w, 64) feature map (7x7 input: 1x1 with pooling, 4x4 without).
    With ``layer_norm``, a LayerNorm over channels (``norm_i``) follows each convolution, before
    its activation. Each convolution's output after its activation (before pooling) is sown as an
    ``intermediates`` variable ``conv_i_out``, (B, h_i, w_i, C_i).

    When every convolution computes sparsely (a sparse index for each, the compiled kernels; no
    pooling, no LayerNorm), the chain runs on the image's channel-major grid (``grid_conv``):
    no window arrays, no layout change between the convolutions.
    """

    channels: Sequence[int] = (16, 32, 64)
    kernel_size: int = 2
    pooling: bool = True
    layer_norm: bool = False

    def chains_on_grid(self) -> bool:
        """Whether every convolution computes through the sparse kernels on one grid."""
        return (not self.pooling and not self.layer_norm and kernels_available()
                and all(has_index(self, f"conv_{i}") for i in range(len(self.channels))))

    def grid_chain(self, x: jax.Array) -> jax.Array:
        """The convolutions on the image's grid (see the class docstring)."""
        batch, height, width, _ = x.shape
        shape, grid, shrink = (batch, height, width), to_grid(x), self.kernel_size - 1
        for i, (features, activation) in enumerate(zip(self.channels, CONV_ACTIVATIONS,
                                                       strict=True)):
            valid = (height - (i + 1) * shrink, width - (i + 1) * shrink)
            grid = activation(PatchConv(features, self.kernel_size, name=f"conv_{i}")(
                grid, grid=(shape, valid)))
            if self.is_mutable_collection("intermediates"):
                self.sow("intermediates", f"conv_{i}_out", from_grid(grid, shape, valid))
        return from_grid(grid, shape, valid)

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        x = image.astype(jnp.float32)
        if self.chains_on_grid():
            return self.grid_chain(x)
        for i, (width, activation) in enumerate(zip(self.channels, CONV_ACTIVATIONS, strict=True)):
            x = PatchConv(width, self.kernel_size, name=f"conv_{i}")(x)
            if self.layer_norm:
                x = nn.LayerNorm(name=f"norm_{i}")(x)
            x = activation(x)
            self.sow("intermediates", f"conv_{i}_out", x)
            if i == 0 and self.pooling:
                x = max_pool_2x2(x)
        return x


class TaskOutputs(nn.Module):
    """The output layers of all task heads, stacked: kernel (T * U, O), bias (T, O).

    Task ``t``'s layer is ``kernel[t * U:(t + 1) * U]`` and ``bias[t]``. (B, T * U) head units,
    zero outside each sample's own task, (B,) task ids -> (B, O).
    """

    num_tasks: int
    out_dim: int

    @nn.compact
    def __call__(self, own_units: jax.Array, task_ids: jax.Array) -> jax.Array:
        kernel = self.param("kernel", per_task_torch_init(self.num_tasks),
                            (own_units.shape[-1], self.out_dim))
        bias = self.param("bias", nn.initializers.zeros, (self.num_tasks, self.out_dim))
        return kernel_product(self, own_units, kernel) + bias[task_ids]


class TaskHeads(nn.Module):
    """Per task, two linear layers with output activations [Tanh, Linear] on a shared embedding.

    ``head_hidden`` maps the features (B, ...) to all heads' units at once, (B, T * U), its
    kernel contracting every non-batch axis of the features; with ``layer_norm``, a LayerNorm
    per task over its U units (``head_norm``) precedes the tanh. The tanh units of every head on
    every sample are sown as ``head_hidden_out`` (B, T * U): the embedding is shared, so each head
    unit is measured on the whole batch (its dormancy stays defined when a batch holds no sample of
    its task). ``heads`` then reads only each sample's own task's U units.
    (B, ...) features, (B,) task ids -> (B, O).
    """

    num_tasks: int
    hidden_dim: int
    out_dim: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, features: jax.Array, task_ids: jax.Array) -> jax.Array:
        batch, units = features.shape[0], self.num_tasks * self.hidden_dim
        h = MaskedDense(units, torch_linear_init, contract_all=True, name="head_hidden")(features)
        if self.layer_norm:
            per_task = h.reshape(batch, self.num_tasks, self.hidden_dim)
            h = nn.LayerNorm(feature_axes=(-2, -1), name="head_norm")(per_task).reshape(batch, -1)
        h = nn.tanh(h)
        self.sow("intermediates", "head_hidden_out", h)
        own = jnp.repeat(task_one_hot(task_ids, self.num_tasks), self.hidden_dim, axis=-1)
        return TaskOutputs(self.num_tasks, self.out_dim, name="heads")(h * own, task_ids)


def stacked_head_layers(num_tasks: int) -> tuple[tuple[str, int, int], ...]:
    """The per-task layers that ``TaskHeads`` stacks into one kernel, as (path ending, axis,
    count): ``head_hidden``'s kernel holds the T heads' hidden layers along its last axis,
    ``heads``' kernel their output layers along its first (``methods.topology.LayerSlices``)."""
    return (("task_heads/head_hidden/kernel", -1, num_tasks),
            ("task_heads/heads/kernel", 0, num_tasks))


def per_task_leaves(num_tasks: int) -> tuple[tuple[str, int, int], ...]:
    """Every leaf of a ``CNNTaskNetwork`` whose entries belong to one task each, as (path
    ending, axis, count): the ``TaskHeads``' kernels, biases and per-task norms, and the rows
    of a ``moe`` / ``moore`` network's ``task_encoder`` (one per one-hot task); slice ``t``
    along ``axis`` is task ``t``'s (``methods.topology.task_index``)."""
    return (("task_heads/head_hidden/kernel", -1, num_tasks),
            ("task_heads/head_hidden/bias", -1, num_tasks),
            ("task_heads/head_norm/scale", -2, num_tasks),
            ("task_heads/head_norm/bias", -2, num_tasks),
            ("task_heads/heads/kernel", -2, num_tasks),
            ("task_heads/heads/bias", -2, num_tasks),
            (f"{TASK_ENCODER}/kernel", -2, num_tasks))


def task_head_features(net: nn.Module, image: jax.Array, task_ids: jax.Array) -> jax.Array:
    """What the task heads of ``net`` (a ``CNNTaskNetwork``, inside its ``__call__``)
    read, built by the architecture ``net.arch``.

    ``mh``: the feature map (B, h, w, C) of one ``MiniGridCNN`` named ``trunk``. ``moe`` /
    ``moore``: ``net.num_experts`` ``MiniGridCNN``s ``expert_j``, each map flattened to d, mixed
    by the ``task_encoder`` of the one-hot task, tanh: (B, d), sown in ``net`` as
    ``representation_out``.
    """
    def cnn(name: str) -> MiniGridCNN:
        return MiniGridCNN(net.channels, pooling=net.pooling, layer_norm=net.layer_norm,
                           name=name)

    if net.arch == "mh":
        return cnn("trunk")(image)
    if net.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {net.arch!r}; accepted: {', '.join(ARCHITECTURES)}")
    batch = image.shape[0]
    experts = jnp.stack([cnn(f"expert_{j}")(image).reshape(batch, -1)
                         for j in range(net.num_experts)], axis=1)
    weights = task_encoder(net.num_experts)(task_one_hot(task_ids, net.num_tasks))
    representation = mix_experts(experts, weights, orthogonal=net.arch == "moore")
    net.sow("intermediates", REPRESENTATION_OUT, representation)
    return representation


class CNNTaskNetwork(nn.Module):
    """PPO's actor (``out_dim`` = actions: logits) or critic (``out_dim`` = 1: the value): a CNN
    representation of ``arch`` (``mh``: ``trunk``; ``moe`` / ``moore``: ``expert_j`` and
    ``task_encoder``, see ``task_head_features``) and per-task heads (``task_heads``).
    (B, H, W, C) image, (B,) task ids -> (B, out_dim). Actor and critic are separate instances
    with their own parameters."""

    num_tasks: int
    out_dim: int
    head_hidden_dim: int = 128
    channels: Sequence[int] = (16, 32, 64)
    pooling: bool = True
    layer_norm: bool = False
    arch: Architecture = "mh"
    num_experts: int = 3

    @nn.compact
    def __call__(self, image: jax.Array, task_ids: jax.Array) -> jax.Array:
        features = task_head_features(self, image, task_ids)
        return TaskHeads(self.num_tasks, self.head_hidden_dim, self.out_dim, self.layer_norm,
                         name="task_heads")(features, task_ids)


def cnn_heads_neuron_layers(num_convs: int = 3) -> tuple[NeuronLayer, ...]:
    """The hidden layers of ``CNNTaskNetwork``: each convolution (channels are the
    neurons), then the head units (T * U neurons)."""
    modules = [("trunk", f"conv_{i}") for i in range(num_convs)]
    modules += [("task_heads", "head_hidden"), ("task_heads", "heads")]
    return tuple(
        NeuronLayer(incoming=("params", *modules[i]), outgoing=("params", *modules[i + 1]),
                    activation=(modules[i][0], f"{modules[i][1]}_out"))
        for i in range(num_convs + 1)
    )


def expert_cnn_heads_neuron_layers(num_experts: int, num_convs: int = 3) -> tuple[NeuronLayer, ...]:
    """The hidden layers of a ``moe`` / ``moore`` ``CNNTaskNetwork``: in each expert
    ``expert_j``, every convolution but the last (channels are the neurons), then the head units.

    An expert's last convolution is mixed with the other experts' (and orthonormalised for
    MOORE), so no single kernel reads its channels: it is not a neuron layer.
    """
    experts = tuple(
        NeuronLayer(incoming=("params", f"expert_{j}", f"conv_{i}"),
                    outgoing=("params", f"expert_{j}", f"conv_{i + 1}"),
                    activation=(f"expert_{j}", f"conv_{i}_out"))
        for j in range(num_experts)
        for i in range(num_convs - 1)
    )
    heads = NeuronLayer(incoming=("params", "task_heads", "head_hidden"),
                        outgoing=("params", "task_heads", "heads"),
                        activation=("task_heads", "head_hidden_out"))
    return (*experts, heads)


def cnn_neuron_layers(
    arch: Architecture, num_experts: int, num_convs: int = 3
) -> tuple[NeuronLayer, ...]:
    """The neuron layers of a ``CNNTaskNetwork`` of architecture ``arch``."""
    if arch == "mh":
        return cnn_heads_neuron_layers(num_convs)
    return expert_cnn_heads_neuron_layers(num_experts, num_convs)


def cnn_feature_size(
    obs_shape: tuple[int, ...], channels: Sequence[int], pooling: bool
) -> int:
    """Size d of the flattened ``MiniGridCNN`` feature map of one (H, W, C) observation (what a
    ``moe`` / ``moore`` expert gives), from shapes only (nothing is computed)."""
    cnn = MiniGridCNN(tuple(channels), pooling=pooling)
    image = jax.ShapeDtypeStruct((1, *obs_shape), jnp.float32)
    variables = jax.eval_shape(cnn.init, jax.random.PRNGKey(0), image)
    out = jax.eval_shape(cnn.apply, variables, image)
    return int(math.prod(out.shape[1:]))
