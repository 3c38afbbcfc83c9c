"""Sparse compute (``--compute sparse|auto``) trains the numbers dense compute trains: the
masked layers of SAC's MLPs and PPO's CNN go through the sparse kernels, the compressed index
follows every mask change (it is rebuilt inside each method's event), RigL and APP get dense
gradients at their events, and the mask invariant holds after every update."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrl_sparse.agents.networks import stacked_head_layers
from mtrl_sparse.agents.sac import SACConfig, make_sac
from mtrl_sparse.agents.sparse_linear import active_mask, kernel_view
from mtrl_sparse.agents.tree_paths import path_str
from mtrl_sparse.agents.trees import is_none
from mtrl_sparse.methods.base import NetworkMethodSettings
from mtrl_sparse.methods.network import build_network
from support.cli import run_cli
from support.invariants import assert_mask_invariant, assert_trees_close
from support.kernels import needs_kernels
from support.method_options import sac_firing_every_update
from support.run_checks import assert_rows_close, deterministic_rows
from support.sac_vmap import (
    ACTION_DIM,
    NUM_TASKS,
    OBS_DIM,
    TINY,
    batch_for,
    vmapped_and_separate_runs,
)

pytestmark = pytest.mark.cpu_numbers  # compares programs bit for bit

METHODS = ["static", "gmp", "set", "rigl", "app", "gmp+redo", "set+reset", "rigl+sign_in",
           "static+ibm"]


def sac_updates(method: str, compute_density: float | None, updates: int = 3):
    """The SAC states after each of ``updates`` updates (events at every update), 80% sparse."""
    sac = sac_firing_every_update(method, 0.8, TINY, NUM_TASKS, OBS_DIM, ACTION_DIM,
                                  compute_density=compute_density)
    state = jax.jit(sac.init)(jax.random.PRNGKey(0))
    update = jax.jit(sac.update)
    states = []
    for i in range(updates):
        batch, task_ids = batch_for(i)
        state, _ = update(state, batch, task_ids, jax.random.PRNGKey(10 + i))
        states.append(state)
    return states


def assert_index_describes_masks(net) -> None:
    """Every masked kernel's index holds exactly the mask's active entries."""
    pairs = jax.tree.leaves(
        jax.tree.map(lambda m, i: None if m is None else (m, i), net.masks, net.sparse_index,
                     is_leaf=is_none),
        is_leaf=lambda x: isinstance(x, tuple))
    assert pairs, "no masked kernel carries an index"
    for mask, index in pairs:
        view = np.asarray(kernel_view(mask))
        np.testing.assert_array_equal(active_mask(index, view.shape), view)


@needs_kernels
@pytest.mark.parametrize("method", METHODS)
def test_sac_under_sparse_compute_trains_what_dense_compute_trains(method):
    sparse = sac_updates(method, compute_density=1.0)
    dense = sac_updates(method, compute_density=None)
    for ours, theirs in zip(sparse, dense, strict=True):
        for net in (ours.actor, ours.critic):
            assert_mask_invariant(net, sparse=True)
            assert_index_describes_masks(net)
        assert_target_index_covers_the_target(ours)
        assert_trees_equal_masks(ours, theirs)
        assert_trees_close(ours.replace(actor=ours.actor.replace(sparse_index=None),
                                        critic=ours.critic.replace(sparse_index=None),
                                        target_critic_index=None),
                           theirs, rtol=1e-4, atol=1e-5)


def assert_target_index_covers_the_target(state) -> None:
    """The target critics' index holds every nonzero target weight and the critics' mask (the
    target's products through it are its dense products)."""
    triples = jax.tree.leaves(
        jax.tree.map(lambda m, p, i: None if m is None else (m, p, i), state.critic.masks,
                     state.target_critic_params, state.target_critic_index, is_leaf=is_none),
        is_leaf=lambda x: isinstance(x, tuple))
    assert triples, "the target critics carry no index"
    for mask, target, index in triples:
        covered = np.asarray(active_mask(index, kernel_view(mask).shape))
        assert np.all(covered[np.asarray(kernel_view(target)) != 0])
        assert np.all(covered[np.asarray(kernel_view(mask))])


@needs_kernels
@pytest.mark.parametrize("method", ["static", "gmp"])
def test_vmapped_runs_under_sparse_compute_equal_the_runs_alone(method):
    """A vmapped group under sparse compute trains what its runs alone train, and each run's
    target index covers its target (the group rebuilds every run's target index when any run's
    masks changed)."""
    separate, states = vmapped_and_separate_runs(method, compute_density=1.0)
    for i, alone in enumerate(separate):
        run = jax.tree.map(lambda x, i=i: x[i], states.replace(step=None, phase=None))
        assert_target_index_covers_the_target(run)
        assert_trees_close(run.replace(target_critic_index=None),
                           alone.replace(step=None, phase=None, target_critic_index=None),
                           rtol=1e-4, atol=1e-5)


def assert_trees_equal_masks(a, b) -> None:
    for net_a, net_b in ((a.actor, b.actor), (a.critic, b.critic)):
        for ma, mb in zip(jax.tree.leaves(net_a.masks), jax.tree.leaves(net_b.masks),
                          strict=True):
            np.testing.assert_array_equal(ma, mb)


def test_auto_compute_switches_a_kernel_to_the_sparse_path_below_its_crossover():
    """GMP starts dense: under auto, a kernel computes densely until its density falls to the
    crossover, then through the kernels."""
    sac = sac_firing_every_update("gmp", 0.9, TINY, NUM_TASKS, OBS_DIM, ACTION_DIM,
                                  compute_density=0.5)
    state = jax.jit(sac.init)(jax.random.PRNGKey(0))
    enabled = lambda s: [bool(i.enabled) for i in jax.tree.leaves(
        s.actor.sparse_index, is_leaf=lambda x: hasattr(x, "enabled")) if i is not None]
    assert not any(enabled(state))
    update = jax.jit(sac.update)
    for i in range(4):
        batch, task_ids = batch_for(i)
        state, _ = update(state, batch, task_ids, jax.random.PRNGKey(i))
    densities = [float(jnp.mean(m)) for m in jax.tree.leaves(state.actor.masks)]
    assert all(d <= 0.5 for d in densities) and all(enabled(state))


@needs_kernels
@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ["--method", "rigl", "--sparsity", "0.9"],
    ["--method", "gmp", "--sparsity", "0.9"],
    # every convolution under the crossover: each computes directly on its map (with the pool)
    # or the three chain on one grid (without)
    ["--method", "set", "--sparsity", "0.95", "--distribution", "uniform"],
    ["--method", "static", "--sparsity", "0.95", "--distribution", "uniform",
     "--ppo.no-cnn-pooling"],
], ids=["rigl", "gmp", "set-uniform", "static-uniform-grid"])
def test_a_minigrid_run_under_sparse_compute_equals_the_dense_run(capsys, tmp_path, flags):
    """PPO's CNN (convolutions, the per-task heads) computes sparsely; the whole run (rollouts,
    updates, method events, evaluations) gives the dense run's rows."""
    rows = {}
    for compute in ("dense", "sparse"):
        run_dir = tmp_path / compute
        code, _, err = run_cli(capsys, [
            "train", "--preset", "minigrid-smoke", *flags,
            "--compute", compute, "--run-dir", str(run_dir), "--no-progress"])
        assert code == 0, err
        rows[compute] = deterministic_rows(run_dir)
    assert_rows_close(rows["sparse"], rows["dense"], rtol=1e-3, atol=1e-5)


class StopBeforeTraining(Exception):
    """Raised in place of building the run: the test needs only what comes before."""


def test_without_the_extension_sparse_compute_says_it_runs_the_fallback(
        capsys, tmp_path, monkeypatch):
    from mtrl_sparse import run_loop

    def stop(configs):
        raise StopBeforeTraining

    monkeypatch.setattr(run_loop, "kernels_available", lambda: False)
    monkeypatch.setattr(run_loop, "make_group", stop)
    with pytest.raises(StopBeforeTraining):
        run_cli(capsys, ["train", "--preset", "minigrid-smoke", "--compute", "sparse",
                         "--run-dir", str(tmp_path / "run"), "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pure-JAX dense fallback" in lines[0], lines


def test_sparse_compute_covers_the_kernels_planned_below_the_crossover():
    """The plan reads the masks' target densities: the kernels it covers are those whose masks
    come out at or below the crossover (at 95% ERK the SAC actor's hidden layers, not its
    per-task heads)."""
    settings = NetworkMethodSettings("static", 0.95, "erk", total_updates=1, compute_density=1.0,
                                     compute_crossover=0.1,
                                     layer_slices=stacked_head_layers(NUM_TASKS))
    network = build_network(settings)
    sac = make_sac(SACConfig(hidden_sizes=(64, 64)), NUM_TASKS, OBS_DIM, ACTION_DIM, network,
                   network)
    state = jax.jit(sac.init)(jax.random.PRNGKey(0))
    for net in (state.actor, state.critic):
        pairs = jax.tree_util.tree_flatten_with_path(
            jax.tree.map(lambda m, i: None if m is None else (float(jnp.mean(m)), i is not None),
                         net.masks, net.sparse_index, is_leaf=is_none),
            is_leaf=lambda x: isinstance(x, tuple))[0]
        covered = {path_str(path): c for path, (_, c) in pairs}
        assert covered and all(c == (d <= 0.1 + 1e-6) for _, (d, c) in pairs), covered
        assert any(covered.values()) and not all(covered.values()), covered
