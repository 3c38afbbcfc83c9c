"""Multi-task networks: a shared trunk with one output head per task.

Shapes: ``B`` batch, ``T`` tasks, ``D`` input features, ``O`` outputs of one head.
Kernels are initialised as PyTorch's ``nn.Linear`` does (uniform in +-1/sqrt(fan_in)), the
initialisation of the reference paper's code; biases start at zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtrl_sparse.agents.tree_paths import get_path

torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def task_one_hot(task_ids: jax.Array, num_tasks: int) -> jax.Array:
    """(B,) int -> (B, T) float32 one-hot task encoding."""
    return jax.nn.one_hot(task_ids, num_tasks, dtype=jnp.float32)


def select_task_head(all_heads: jax.Array, task_ids: jax.Array) -> jax.Array:
    """(B, T, O) outputs of every head, (B,) task ids -> (B, O) output of each sample's head."""
    return jnp.take_along_axis(all_heads, task_ids[:, None, None], axis=1)[:, 0]


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
        for i, width in enumerate(self.hidden_sizes):
            x = nn.Dense(width, kernel_init=torch_linear_init, name=f"hidden_{i}")(x)
            if self.layer_norm:
                x = nn.LayerNorm(name=f"norm_{i}")(x)
            x = nn.relu(x)
            self.sow("intermediates", f"hidden_{i}_out", x)
        heads = nn.Dense(
            self.num_tasks * self.head_dim, kernel_init=torch_linear_init, name="heads"
        )(x)
        return select_task_head(heads.reshape(x.shape[0], self.num_tasks, self.head_dim), task_ids)


class GaussianActor(nn.Module):
    """Multi-head policy network: per task, the mean and log-std of a diagonal Gaussian.

    Returns ``(mean, log_std)``, each (B, A); ``log_std`` is clipped to ``log_std_bounds``.
    """

    hidden_sizes: Sequence[int]
    num_tasks: int
    action_dim: int
    log_std_bounds: tuple[float, float] = (-20.0, 2.0)
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array, task_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = MultiHeadMLP(self.hidden_sizes, self.num_tasks, 2 * self.action_dim,
                           self.layer_norm, name="mlp")(obs, task_ids)
        mean, log_std = jnp.split(out, 2, axis=-1)
        return mean, jnp.clip(log_std, *self.log_std_bounds)


class TwinCritic(nn.Module):
    """Two independent multi-head Q networks ``q1`` and ``q2`` on [obs, action, one-hot task].

    Returns Q values of shape (2, B).
    """

    hidden_sizes: Sequence[int]
    num_tasks: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array, actions: jax.Array, task_ids: jax.Array) -> jax.Array:
        features = jnp.concatenate([obs, actions], axis=-1)
        qs = [
            MultiHeadMLP(self.hidden_sizes, self.num_tasks, 1, self.layer_norm, name=name)(
                features, task_ids)[:, 0]
            for name in ("q1", "q2")
        ]
        return jnp.stack(qs)
