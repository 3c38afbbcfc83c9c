"""Per-task heads stacked in one kernel are separate layers for every per-layer method: each task's
slice gets its own target count (uniform or ERK), threshold, and drop/regrow counts."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtrl_sparse.agent_kind import EpisodeTracker
from mtrl_sparse.agents.cnn import stacked_head_layers
from mtrl_sparse.agents.networks import NeuronLayer
from mtrl_sparse.methods.gmp import GMPOptions
from mtrl_sparse.methods.pruning import all_active_masks, drop_and_regrow, prune_layers
from mtrl_sparse.methods.redo import dormant_neurons
from mtrl_sparse.methods.topology import (
    join_layers,
    layer_densities,
    num_to_keep,
    random_masks,
    split_layers,
)
from mtrl_sparse.on_policy import OnPolicyRun
from mtrl_sparse.presets import get_preset

TASKS, UNITS, FEATURES, OUT = 3, 4, 8, 5
SLICES = stacked_head_layers(TASKS)


def head_params(key: jax.Array, loud_task: int = 0) -> dict:
    """A PPO-shaped tree: a trunk kernel and the stacked head kernels, with task ``loud_task``'s
    head weights above 100 in magnitude (a threshold shared across tasks keeps those first)."""
    k = jax.random.split(key, 3)
    hidden = jax.random.normal(k[1], (FEATURES, TASKS * UNITS))
    out = jax.random.normal(k[2], (TASKS * UNITS, OUT))
    loud = slice(loud_task * UNITS, (loud_task + 1) * UNITS)
    hidden = hidden.at[:, loud].set(100.0 + jnp.abs(hidden[:, loud]))
    out = out.at[loud, :].set(100.0 + jnp.abs(out[loud, :]))
    return {"params": {"trunk": {"kernel": jax.random.normal(k[0], (6, FEATURES))},
                       "task_heads": {"head_hidden": {"kernel": hidden},
                                      "heads": {"kernel": out, "bias": jnp.zeros((TASKS, OUT))}}}}


def maskable_of(params: dict) -> dict:
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: path[-1].key == "kernel", params)


def per_task_active(masks: dict) -> tuple[list[int], list[int]]:
    """Active weights of each task's hidden-layer slice and output-layer slice."""
    heads = masks["params"]["task_heads"]
    hidden = heads["head_hidden"]["kernel"].reshape(FEATURES, TASKS, UNITS)
    out = heads["heads"]["kernel"].reshape(TASKS, UNITS, OUT)
    return ([int(hidden[:, t].sum()) for t in range(TASKS)],
            [int(out[t].sum()) for t in range(TASKS)])


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), axis_pick=st.integers(0, 2),
       count=st.integers(1, 3))
def test_split_and_join_layers_are_inverse(shape, axis_pick, count):
    axis = axis_pick % len(shape)
    shape = list(shape)
    shape[axis] *= count
    x = jnp.arange(np.prod(shape)).reshape(shape)
    layers = split_layers(x, axis, count)
    assert layers.shape[0] == count
    np.testing.assert_array_equal(join_layers(layers, axis, tuple(shape)), x)
    # layer t is the t-th block along the axis
    block = shape[axis] // count
    for t in range(count):
        np.testing.assert_array_equal(
            jnp.moveaxis(layers[t], 0, axis),
            jax.lax.slice_in_dim(x, t * block, (t + 1) * block, axis=axis))


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_uniform_pruning_gives_every_task_slice_exactly_its_count(sparsity):
    params = head_params(jax.random.PRNGKey(0))
    masks = all_active_masks(params, maskable_of(params))
    pruned = prune_layers(params, masks, jnp.float32(sparsity), "uniform", SLICES)
    hidden, out = per_task_active(pruned)
    assert hidden == [int(num_to_keep(1 - sparsity, FEATURES * UNITS))] * TASKS
    assert out == [int(num_to_keep(1 - sparsity, UNITS * OUT))] * TASKS
    # without the slices one threshold serves the whole kernel: the loud task keeps all it can
    shared_hidden, _ = per_task_active(prune_layers(params, masks, jnp.float32(sparsity)))
    kept = int(num_to_keep(1 - sparsity, TASKS * FEATURES * UNITS))
    assert shared_hidden[0] == min(FEATURES * UNITS, kept) > hidden[0]


def test_erk_pruning_treats_each_task_slice_as_its_own_layer():
    params = head_params(jax.random.PRNGKey(1))
    masks = all_active_masks(params, maskable_of(params))
    pruned = prune_layers(params, masks, jnp.float32(0.8), "erk", SLICES)
    shapes = [(6, FEATURES)] + [(TASKS * UNITS // TASKS, FEATURES)] * TASKS \
        + [(UNITS, OUT)] * TASKS
    densities = layer_densities(shapes, 0.8, "erk")
    hidden, out = per_task_active(pruned)
    assert hidden == [int(num_to_keep(densities[1 + t], FEATURES * UNITS)) for t in range(TASKS)]
    assert out == [int(num_to_keep(densities[1 + TASKS + t], UNITS * OUT))
                   for t in range(TASKS)]
    active = sum(int(m.sum()) for m in jax.tree.leaves(pruned))
    total = sum(m.size for m in jax.tree.leaves(pruned))
    assert abs(1 - active / total - 0.8) < 0.02


def test_random_topology_and_drop_and_regrow_keep_per_task_counts():
    params = head_params(jax.random.PRNGKey(2))
    masks = random_masks(params, maskable_of(params), 0.75, "uniform", jax.random.PRNGKey(3),
                         SLICES)
    expected = per_task_active(masks)
    assert expected[0] == [int(num_to_keep(0.25, FEATURES * UNITS))] * TASKS
    assert expected[1] == [int(num_to_keep(0.25, UNITS * OUT))] * TASKS
    grow = jax.tree.map(lambda p: jax.random.uniform(jax.random.PRNGKey(4), p.shape), params)
    evolved = drop_and_regrow(params, masks, grow, jnp.float32(0.5), SLICES)
    assert per_task_active(evolved) == expected
    assert any(bool(jnp.any(a != b)) for a, b in
               zip(jax.tree.leaves(masks), jax.tree.leaves(evolved), strict=True))


def test_a_ppo_run_prunes_each_task_head_to_its_own_count():
    """The run builds its networks with the heads' slices: after GMP reaches 90% on the smoke
    preset, each task's hidden and output head layers of the actor hold exactly 10%."""
    config = get_preset("minigrid-smoke").config
    config = dataclasses.replace(
        config, method="gmp", sparsity=0.9, distribution="uniform",
        methods=dataclasses.replace(config.methods, gmp=GMPOptions(
            start_fraction=0.0, end_fraction=0.1, prune_every_updates=4)))
    run = OnPolicyRun(config)
    run.start()
    run.iterate(EpisodeTracker(run.task_names, run.num_envs))
    masks = jax.device_get(run.state.actor.masks)["params"]["task_heads"]
    tasks = len(run.task_names)
    hidden = masks["head_hidden"]["kernel"]
    hidden = hidden.reshape(-1, tasks, hidden.shape[-1] // tasks)
    out = masks["heads"]["kernel"].reshape(tasks, -1, masks["heads"]["kernel"].shape[-1])
    run.close()
    for t in range(tasks):
        assert hidden[:, t].sum() == num_to_keep(0.1, hidden[:, t].size)
        assert out[t].sum() == num_to_keep(0.1, out[t].size)


def test_redo_scores_each_task_heads_units_against_their_own_mean():
    """Task 0's head units are 10,000x as active as the others': against the mean over all head
    units the others look dormant (score <= 0.001); scored per task none is."""
    layer = NeuronLayer(incoming=("params", "task_heads", "head_hidden"),
                        outgoing=("params", "task_heads", "heads"),
                        activation=("task_heads", "head_hidden_out"))
    scale = jnp.repeat(jnp.array([1e4, 1.0, 1.0]), UNITS)
    h = jnp.abs(jax.random.normal(jax.random.PRNGKey(5), (16, TASKS * UNITS))) + 0.5
    activations = {"task_heads": {"head_hidden_out": h * scale}}
    masks = {"params": {"task_heads": {"head_hidden": {"kernel": None}}}}
    shared, _ = dormant_neurons(activations, masks, [layer], 1e-3)
    assert bool(jnp.all(shared[0][UNITS:]))
    per_task, alive = dormant_neurons(activations, masks, [layer], 1e-3,
                                      stacked_head_layers(TASKS))
    assert not bool(jnp.any(per_task[0])) and bool(jnp.all(alive[0]))
