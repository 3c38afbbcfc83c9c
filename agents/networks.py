"""Multi-task networks: a representation of the input, then one output head per task.

Three architectures (``Architecture``) build the representation the task heads read:
- ``mh`` (multi-head): a shared trunk on [features, one-hot task] (``MultiHeadMLP``);
- ``moe`` (mixture of experts): k task-agnostic experts on the features alone, mixed per task
  by a linear ``task_encoder`` of the one-hot task: ``tanh(sum_k w_k(task) * expert_k(x))``;
- ``moore`` (mixture of orthogonal experts, Hendawy et al. 2024, "Multi-Task Reinforcement
  Learning with Mixture of Orthogonal Experts", ICLR): as ``moe``, with the k expert outputs of
  each sample made orthonormal (``orthonormalize``) before the mix.
The task encoder is never masked (``mtrl_sparse.agents.net_state.default_maskable`` skips every
leaf under a module named ``TASK_ENCODER``).

Shapes: ``B`` batch, ``T`` tasks, ``D`` input features, ``O`` outputs of one head, ``k`` experts,
``d`` representation size.
Kernels are initialised as PyTorch's ``nn.Linear`` does (uniform in +-1/sqrt(fan_in)), the
initialisation of the reference paper's code; biases start at zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtrl_sparse.agents.sparse_linear import MaskedDense, has_index
from mtrl_sparse.agents.tree_paths import get_path

torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

Architecture = Literal["mh", "moe", "moore"]
"""How a network builds the representation its task heads read (see the module docstring)."""
ARCHITECTURES: tuple[str, ...] = ("mh", "moe", "moore")

TASK_ENCODER = "task_encoder"
"""Module name of the linear map one-hot task -> expert mixing weights (never masked)."""
REPRESENTATION_OUT = "representation_out"
"""``intermediates`` name of the mixed representation (B, d) of ``moe`` / ``moore`` networks."""


def check_experts(arch: str, num_experts: int, representation_size: int, what: str) -> None:
    """ValueError (one line) unless ``arch`` is known, ``num_experts`` >= 1 and, for
    ``moore``, ``num_experts`` <= ``representation_size`` (no more orthonormal vectors than
    dimensions); ``what`` names the representation in the message."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; accepted: {', '.join(ARCHITECTURES)}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1 (1: a single expert scaled per task); "
                         f"got {num_experts}")
    if arch == "moore" and num_experts > representation_size:
        raise ValueError(f"arch moore orthonormalises {num_experts} experts in "
                         f"{representation_size} dimensions ({what}); accepted: num_experts <= "
                         f"{representation_size}")


def task_one_hot(task_ids: jax.Array, num_tasks: int) -> jax.Array:
    """(B,) int -> (B, T) float32 one-hot task encoding."""
    return jax.nn.one_hot(task_ids, num_tasks, dtype=jnp.float32)


def select_task_head(all_heads: jax.Array, task_ids: jax.Array) -> jax.Array:
    """(B, T, O) outputs of every head, (B,) task ids -> (B, O) output of each sample's head."""
    return jnp.take_along_axis(all_heads, task_ids[:, None, None], axis=1)[:, 0]


def orthonormalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Gram-Schmidt over the expert axis: (B, k, d) -> (B, k, d), per sample k orthonormal rows.

    MOORE's orthogonal representation (Hendawy et al. 2024, "Multi-Task Reinforcement Learning
    with Mixture of Orthogonal Experts", ICLR): row ``i`` of the result is ``x[:, i]`` minus its
    projections on the rows before it, normalised, so rows ``0..i`` span what ``x[:, 0..i]``
    spans and the result is what classical Gram-Schmidt gives in exact arithmetic. Computed as
    modified Gram-Schmidt with one re-orthogonalisation pass ("twice is enough": orthogonal to
    working precision even for nearly dependent rows) and the safe norm ``sqrt(|r|^2 + eps^2)``
    (``eps`` in the units of ``x``): a residual ``r`` much longer than ``eps`` comes out of unit
    length (relative error ``(eps / |r|)^2 / 2``); an all-zero expert comes out zero and a row
    (numerically) in the span of the previous ones comes out shorter than 1, never NaN, with
    finite gradients. Needs ``k <= d`` to give k orthonormal rows.
    """
    basis: list[jax.Array] = []
    for i in range(x.shape[-2]):
        residual = x[..., i, :]
        for _ in range(2):
            for q in basis:
                residual = residual - jnp.sum(q * residual, axis=-1, keepdims=True) * q
        norm = jnp.sqrt(jnp.sum(jnp.square(residual), axis=-1, keepdims=True) + eps**2)
        basis.append(residual / norm)
    return jnp.stack(basis, axis=-2)


def mix_experts(expert_outputs: jax.Array, mixing_weights: jax.Array,
                orthogonal: bool) -> jax.Array:
    """(B, k, d) expert outputs, (B, k) mixing weights -> (B, d) ``tanh(sum_k w_k * e_k)``.

    With ``orthogonal`` (MOORE), the k outputs of each sample are first made orthonormal.
    """
    if orthogonal:
        expert_outputs = orthonormalize(expert_outputs)
    return jnp.tanh(jnp.einsum("bk,bkd->bd", mixing_weights, expert_outputs))


def task_encoder(num_experts: int) -> nn.Dense:
    """The linear task encoder, one-hot task (B, T) -> mixing weights (B, k): one kernel (T, k),
    no bias and no softmax (as MOORE's code). Create it inside a module's ``__call__``."""
    return nn.Dense(num_experts, use_bias=False, kernel_init=torch_linear_init, name=TASK_ENCODER)


def sown_activations(net: nn.Module) -> Callable[..., Any]:
    """``activations(variables, *inputs)``: the ``intermediates`` ``net`` sows on ``inputs``.

    Each sown value is unwrapped from Flax's one-element tuple, so the result is keyed like the
    ``activation`` paths of the network's ``NeuronLayer``s, e.g. ``{"mlp": {"hidden_0_out": x}}``.
    """

    def activations(variables: Any, *inputs: jax.Array) -> Any:
        _, state = net.apply(variables, *inputs, mutable=["intermediates"])
        return jax.tree.map(lambda sown: sown[0], state["intermediates"],
                            is_leaf=lambda x: isinstance(x, tuple))

    return activations


class NeuronLayer(NamedTuple):
    """A hidden layer's neurons, seen from the parameters (for neuron-level methods like ReDo).

    ``incoming`` and ``outgoing`` are the parameter paths (tuples of keys below the variables
    root, e.g. ``("params", "mlp", "hidden_0")``) of the Dense modules that feed the layer and
    that read it; ``activation`` is the path of the layer's post-activation output among the
    ``intermediates`` the network sows.
    """

    incoming: tuple[str, ...]
    outgoing: tuple[str, ...]
    activation: tuple[str, ...]


def mlp_neuron_layers(prefix: tuple[str, ...], num_hidden: int) -> tuple[NeuronLayer, ...]:
    """The hidden layers of the ``MultiHeadMLP`` at module path ``prefix`` (e.g. ``("mlp",)``)."""
    names = [f"hidden_{i}" for i in range(num_hidden)] + ["heads"]
    return tuple(
        NeuronLayer(incoming=("params", *prefix, names[i]),
                    outgoing=("params", *prefix, names[i + 1]),
                    activation=(*prefix, f"{names[i]}_out"))
        for i in range(num_hidden)
    )


def expert_mlp_neuron_layers(
    prefix: tuple[str, ...], num_experts: int, num_layers: int
) -> tuple[NeuronLayer, ...]:
    """The hidden layers of the ``ExpertMLP``s ``expert_0 .. expert_{k-1}`` of the
    ``MixtureOfExpertsMLP`` at ``prefix``: every layer of each expert but its last.

    An expert's last layer is linear and its units are mixed with the other experts' (and, for
    MOORE, orthonormalised), so no single kernel reads them: it is not a neuron layer, and
    neither is the mixed representation (the heads read it, but it has no incoming kernel).
    """
    return tuple(
        NeuronLayer(incoming=("params", *prefix, f"expert_{j}", f"hidden_{i}"),
                    outgoing=("params", *prefix, f"expert_{j}", f"hidden_{i + 1}"),
                    activation=(*prefix, f"expert_{j}", f"hidden_{i}_out"))
        for j in range(num_experts)
        for i in range(num_layers - 1)
    )


def multi_task_mlp_layers(
    arch: Architecture, prefix: tuple[str, ...], num_layers: int, num_experts: int
) -> tuple[tuple[NeuronLayer, ...], tuple[str, ...]]:
    """(neuron layers, activation path of the representation the heads read) of the
    ``multi_task_mlp`` at module path ``prefix``: for ``mh`` its last hidden layer, for
    ``moe`` / ``moore`` the mixed representation (``REPRESENTATION_OUT``)."""
    if arch == "mh":
        return mlp_neuron_layers(prefix, num_layers), (*prefix, f"hidden_{num_layers - 1}_out")
    return (expert_mlp_neuron_layers(prefix, num_experts, num_layers),
            (*prefix, REPRESENTATION_OUT))


def check_neuron_layers(variables: Any, layers: Sequence[NeuronLayer]) -> None:
    """ValueError unless each layer's outgoing kernel holds its neurons on axis -2.

    ``variables`` may hold arrays or shapes (``jax.eval_shape`` of the network's init). A layer's
    neurons are the last axis of its incoming kernel; neuron methods zero the rows
    ``outgoing_kernel[..., i, :]``, which is only right if that axis -2 has the same length.
    """
    for layer in layers:
        incoming = get_path(variables, (*layer.incoming, "kernel")).shape
        outgoing = get_path(variables, (*layer.outgoing, "kernel")).shape
        if len(outgoing) < 2 or outgoing[-2] != incoming[-1]:
            raise ValueError(
                f"neuron layer {'/'.join(layer.incoming)}: {incoming[-1]} neurons, but the "
                f"outgoing kernel {'/'.join(layer.outgoing)} has shape {outgoing} (its axis -2 "
                "must index those neurons)")


def stacked_head_layers(num_tasks: int) -> tuple[tuple[str, int, int], ...]:
    """The per-task output layers that ``MultiHeadMLP`` and ``MixtureOfExpertsMLP`` stack into
    the kernel ``heads`` (T x O outputs along its last axis), as (path ending, axis, count)
    (``methods.topology.LayerSlices``)."""
    return (("heads/kernel", -1, num_tasks),)


def per_task_leaves(num_tasks: int) -> tuple[tuple[str, int, int], ...]:
    """Every leaf of a ``multi_task_mlp`` whose entries belong to one task each, as (path
    ending, axis, count): the heads' kernel and bias (T x O outputs along their last axis) and
    the rows of a ``moe`` / ``moore`` network's ``task_encoder``; slice ``t`` along ``axis`` is
    task ``t``'s (``methods.topology.task_index``). The one-hot task inputs of an ``mh`` trunk
    stay trunk weights (the first hidden layer mixes them with the features)."""
    return (("heads/kernel", -1, num_tasks), ("heads/bias", -1, num_tasks),
            (f"{TASK_ENCODER}/kernel", -2, num_tasks))


def feature_major_chain(module: nn.Module, layers: Sequence[str],
                        layer_norm: bool) -> list[bool]:
    """For a stack of ``MaskedDense`` children ``layers`` of ``module`` (each reading the
    previous one's output through elementwise ops only), whether layer ``i`` hands its output
    to layer ``i + 1`` feature-major: when both compute through the sparse kernels
    (``has_index``), so that the activations between them skip the transposes into and out of
    the kernels' layout. Never with ``layer_norm`` (it normalises over the feature axis), never
    for the last layer. Values are the same either way (the layout changes, not the sums)."""
    indexed = [has_index(module, name) for name in layers]
    return [not layer_norm and indexed[i] and indexed[i + 1] for i in range(len(layers) - 1)
            ] + [False]


class MultiHeadMLP(nn.Module):
    """ReLU MLP trunk on [features, one-hot task] and a linear head per task.

    The heads are one ``Dense`` of ``T * O`` outputs named ``heads`` (so a mask over it masks each
    head's weights); each sample reads its own task's head. With ``layer_norm``, a LayerNorm
    (``norm_i``) follows each hidden linear layer, before the activation. Each hidden layer's
    output (after the activation) is sown as an ``intermediates`` variable named ``hidden_i_out``.
    """

    hidden_sizes: Sequence[int]
    num_tasks: int
    head_dim: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, features: jax.Array, task_ids: jax.Array) -> jax.Array:
        """(B, D) features, (B,) task ids -> (B, O)."""
        x = jnp.concatenate([features, task_one_hot(task_ids, self.num_tasks)], axis=-1)
        names = [f"hidden_{i}" for i in range(len(self.hidden_sizes))] + ["heads"]
        chained = feature_major_chain(self, names, self.layer_norm)
        for i, width in enumerate(self.hidden_sizes):
            x = MaskedDense(width, torch_linear_init, name=names[i])(
                x, x_feature_major=chained[i - 1] if i else False, y_feature_major=chained[i])
            if self.layer_norm:
                x = nn.LayerNorm(name=f"norm_{i}")(x)
            x = nn.relu(x)
            self.sow("intermediates", f"hidden_{i}_out", x.T if chained[i] else x)
        heads = MaskedDense(self.num_tasks * self.head_dim, torch_linear_init, name="heads")(
            x, x_feature_major=chained[-2] if self.hidden_sizes else False)
        return select_task_head(
            heads.reshape(features.shape[0], self.num_tasks, self.head_dim), task_ids)


class ExpertMLP(nn.Module):
    """One task-agnostic expert: Dense layers ``hidden_0 .. hidden_{n-1}`` of ``hidden_sizes``,
    ReLU after each but the last, which is linear: (B, D) -> (B, d = hidden_sizes[-1]).

    With ``layer_norm``, a LayerNorm (``norm_i``) precedes each ReLU. Each ReLU layer's output is
    sown as ``hidden_i_out``.
    """

    hidden_sizes: Sequence[int]
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        last = len(self.hidden_sizes) - 1
        names = [f"hidden_{i}" for i in range(len(self.hidden_sizes))]
        chained = feature_major_chain(self, names, self.layer_norm)  # the last one is False
        for i, width in enumerate(self.hidden_sizes):
            x = MaskedDense(width, torch_linear_init, name=names[i])(
                x, x_feature_major=chained[i - 1] if i else False, y_feature_major=chained[i])
            if i < last:
                if self.layer_norm:
                    x = nn.LayerNorm(name=f"norm_{i}")(x)
                x = nn.relu(x)
                self.sow("intermediates", f"hidden_{i}_out", x.T if chained[i] else x)
        return x


class MixtureOfExpertsMLP(nn.Module):
    """``num_experts`` ``ExpertMLP``s on the features (not the task), mixed per task, and the
    linear heads of ``MultiHeadMLP``.

    Experts ``expert_0 .. expert_{k-1}`` map (B, D) to (B, k, d); the ``task_encoder`` maps the
    one-hot task to (B, k) weights; the representation ``tanh(sum_k w_k * expert_k)`` (B, d),
    with the experts orthonormalised first if ``orthogonal`` (MOORE), is sown as
    ``representation_out`` and read by ``heads`` (one Dense of ``T * O`` outputs).
    """

    hidden_sizes: Sequence[int]
    num_tasks: int
    head_dim: int
    num_experts: int
    orthogonal: bool = False
    layer_norm: bool = False

    @nn.compact
    def __call__(self, features: jax.Array, task_ids: jax.Array) -> jax.Array:
        """(B, D) features, (B,) task ids -> (B, O)."""
        experts = jnp.stack([
            ExpertMLP(self.hidden_sizes, self.layer_norm, name=f"expert_{j}")(features)
            for j in range(self.num_experts)
        ], axis=1)
        weights = task_encoder(self.num_experts)(task_one_hot(task_ids, self.num_tasks))
        representation = mix_experts(experts, weights, self.orthogonal)
        self.sow("intermediates", REPRESENTATION_OUT, representation)
        heads = MaskedDense(self.num_tasks * self.head_dim, torch_linear_init,
                            name="heads")(representation)
        return select_task_head(
            heads.reshape(features.shape[0], self.num_tasks, self.head_dim), task_ids)


def multi_task_mlp(
    arch: Architecture, hidden_sizes: Sequence[int], num_tasks: int, head_dim: int,
    layer_norm: bool, num_experts: int, name: str,
) -> nn.Module:
    """The multi-task MLP of ``arch`` named ``name``: ``MultiHeadMLP`` for ``mh``,
    ``MixtureOfExpertsMLP`` (orthogonal for ``moore``) otherwise; called on (features, task ids).
    """
    if arch == "mh":
        return MultiHeadMLP(hidden_sizes, num_tasks, head_dim, layer_norm, name=name)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; accepted: {', '.join(ARCHITECTURES)}")
    return MixtureOfExpertsMLP(hidden_sizes, num_tasks, head_dim, num_experts,
                               orthogonal=arch == "moore", layer_norm=layer_norm, name=name)


class GaussianActor(nn.Module):
    """Multi-task policy network ``mlp`` (of ``arch``): per task, the mean and log-std of a
    diagonal Gaussian.

    Returns ``(mean, log_std)``, each (B, A); ``log_std`` is clipped to ``log_std_bounds``.
    """

    hidden_sizes: Sequence[int]
    num_tasks: int
    action_dim: int
    log_std_bounds: tuple[float, float] = (-20.0, 2.0)
    layer_norm: bool = False
    arch: Architecture = "mh"
    num_experts: int = 4

    @nn.compact
    def __call__(self, obs: jax.Array, task_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = multi_task_mlp(self.arch, self.hidden_sizes, self.num_tasks, 2 * self.action_dim,
                             self.layer_norm, self.num_experts, name="mlp")(obs, task_ids)
        mean, log_std = jnp.split(out, 2, axis=-1)
        return mean, jnp.clip(log_std, *self.log_std_bounds)


class TwinCritic(nn.Module):
    """Two independent multi-task Q networks ``q1`` and ``q2`` (of ``arch``) on [obs, action] and
    the task (``mh``: the one-hot task joins the trunk's input; ``moe`` / ``moore``: it only
    mixes the experts).

    Returns Q values of shape (2, B).
    """

    hidden_sizes: Sequence[int]
    num_tasks: int
    layer_norm: bool = False
    arch: Architecture = "mh"
    num_experts: int = 4

    @nn.compact
    def __call__(self, obs: jax.Array, actions: jax.Array, task_ids: jax.Array) -> jax.Array:
        features = jnp.concatenate([obs, actions], axis=-1)
        qs = [
            multi_task_mlp(self.arch, self.hidden_sizes, self.num_tasks, 1, self.layer_norm,
                           self.num_experts, name=name)(features, task_ids)[:, 0]
            for name in ("q1", "q2")
        ]
        return jnp.stack(qs)
