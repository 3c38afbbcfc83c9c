"""The continual-learning methods on multi-task SAC under CW10 (``cw10-quick``'s networks, batch
and replay, its lengths cut to one 20-step episode per task): a mechanics test, not a results
table (``cw10-quick`` learns little on a CPU budget). For each method, from the checkpoint at
the end of every task:

- APP: one pruning per task (a megabatch each), masks nested (a pruned weight never returns),
  the target density after the last task, no layer and no task's head slice emptied;
- sparse tuning: one tuning per boundary; between two task ends only the entries trainable in
  either task's subset change, a small share of the network;
- IBM: one consolidation per boundary; an entry once frozen keeps its owner and its value for
  the rest of the run, and the frozen share grows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from mtrl_sparse.agents.networks import stacked_head_layers
from mtrl_sparse.config import with_current_methods
from mtrl_sparse.methods.sparse_tune import FreezeState
from mtrl_sparse.presets import get_preset
from mtrl_sparse.run_dir import read_metrics
from mtrl_sparse.run_loop import train
from support.run_checks import checkpoint_states, empty_layers

pytestmark = pytest.mark.slow

TASKS = 10
NETWORKS = ("actor", "critic")


def cw10_quick_run(run_dir: Path, method: str, sparsity: float = 0.0, **options) -> list:
    """Train cw10-quick cut to one 20-step episode per task (warm-up half of the first), a
    checkpoint, a log row and an evaluation at every task's end; its [(step, state)] per
    checkpoint."""
    config = with_current_methods(get_preset("cw10-quick").config)
    episode = 20 * config.vector_env_steps()
    config = dataclasses.replace(
        config, total_env_steps=TASKS * episode, warmup_env_steps=episode // 2,
        eval_every_env_steps=episode, log_every_env_steps=episode,
        checkpoint_every_env_steps=episode, keep_checkpoints=TASKS + 1,
        env=dataclasses.replace(config.env, max_episode_steps=20, eval_episodes_per_task=1),
        method=method, sparsity=sparsity, progress=False, run_dir=str(run_dir),
        plasticity=dataclasses.replace(config.plasticity, every_updates=0),
        methods=dataclasses.replace(config.methods, **options))
    train(config)
    states = checkpoint_states(run_dir)
    assert [step for step, _ in states] == [episode * (t + 1) for t in range(TASKS)]
    return states


def train_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "train/episodes" in r]


def net(state, network: str):
    """The ``NetState`` of ``network`` in a SAC checkpoint's state."""
    return getattr(state.agent, network)


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_app_prunes_once_per_task_into_nested_masks_and_empties_no_head(tmp_path):
    states = cw10_quick_run(tmp_path, "app", 0.9)
    rows = train_rows(tmp_path)
    for network in NETWORKS:
        assert [r[f"{network}/app/events"] for r in rows] == list(range(1, TASKS + 1))
        assert rows[-1][f"{network}_sparsity"] == pytest.approx(0.9, abs=0.005)
        densities = [np.mean(np.concatenate([m.ravel() for m in leaves(
            net(state, network).masks)])) for _, state in states]
        assert all(a > b for a, b in zip(densities, densities[1:], strict=False)), densities
        for (_, before), (_, after) in zip(states, states[1:], strict=False):
            for old, new in zip(leaves(net(before, network).masks),
                                leaves(net(after, network).masks), strict=True):
                assert not np.any(new & ~old), "a pruned weight came back"
        masks = net(states[-1][1], network).masks
        assert empty_layers(masks, stacked_head_layers(TASKS)) == []


def freeze_scale(opt_state) -> list[np.ndarray]:
    """The trainable set (1: may be updated) in a sparse-tuning optimizer's state."""
    (found,) = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
        x, FreezeState)) if isinstance(s, FreezeState)]
    return leaves(found.sparse_tune_scale)


def test_sparse_tuning_changes_only_the_chosen_subsets_after_the_first_task(tmp_path):
    config = with_current_methods(get_preset("cw10-quick").config)
    states = cw10_quick_run(tmp_path, "sparse_tune", sparse_tune=dataclasses.replace(
        config.methods.sparse_tune, score_samples=2 * config.sac.batch_size))  # 2 updates
    rows = train_rows(tmp_path)
    for network in NETWORKS:
        assert [r[f"{network}/sparse_tune/tunings"] for r in rows] == list(range(TASKS))
        for (_, before), (_, after) in zip(states[1:], states[2:], strict=False):
            old, new = net(before, network), net(after, network)
            changed = [a != b for a, b in zip(leaves(old.params), leaves(new.params),
                                              strict=True)]
            allowed = [(a > 0) | (b > 0) for a, b in zip(freeze_scale(old.opt_state),
                                                         freeze_scale(new.opt_state),
                                                         strict=True)]
            assert not any(np.any(c & ~a) for c, a in zip(changed, allowed, strict=True))
            share = sum(c.sum() for c in changed) / sum(c.size for c in changed)
            assert 0 < share < 0.1, share


def test_ibm_freezes_each_tasks_subnetwork_for_good(tmp_path):
    """Once frozen, an entry stays frozen at its value; the frozen share grows; an ended task's
    snapshot never changes; the gates of frozen weights keep training."""
    states = cw10_quick_run(tmp_path, "ibm")
    rows = train_rows(tmp_path)
    for network in NETWORKS:
        assert [r[f"{network}/ibm/consolidations"] for r in rows] == list(range(TASKS))
        frozen = [r[f"{network}/ibm/frozen_fraction"] for r in rows]
        assert frozen[0] == 0.0 < frozen[1] and frozen == sorted(frozen), frozen
        gates_moved = False
        for task, ((_, before), (_, after)) in enumerate(zip(states, states[1:], strict=False)):
            old, new = net(before, network), net(after, network)
            held = leaves(old.method_state["ibm"]["consolidated"])
            for h, later, p_old, p_new in zip(held, leaves(new.method_state["ibm"]["consolidated"]),
                                              leaves(old.params), leaves(new.params), strict=True):
                assert not np.any(h & ~later), "an entry left the frozen set"
                np.testing.assert_array_equal(p_new[h], p_old[h])
            for v_old, v_new in zip(leaves(old.method_state["ibm"]["views"]),
                                    leaves(new.method_state["ibm"]["views"]), strict=True):
                np.testing.assert_array_equal(v_new[:task], v_old[:task])
            moved = jax.tree.map(
                lambda a, b, h: a is not None and bool(np.any(np.asarray(a)[np.asarray(h)]
                                                             != np.asarray(b)[np.asarray(h)])),
                old.scales, new.scales, old.method_state["ibm"]["consolidated"],
                is_leaf=lambda x: x is None)
            gates_moved |= any(jax.tree.leaves(moved))
        assert gates_moved, "no gate of a frozen weight trained"
