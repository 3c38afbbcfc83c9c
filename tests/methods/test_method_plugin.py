"""A method defined outside the package works everywhere a built-in one does, with no other file
touched: registered with ``register`` (here scoped by ``registered``), it gets its CLI flags, runs
in compositions, vmaps over target sparsities, and resumes from a checkpoint.

The method ("magdrop": magnitude drop, random regrowth) is defined entirely here: every
``every_updates`` updates, each masked layer drops the ``fraction`` of its active weights with the
smallest magnitude and regrows as many at random among its inactive positions (from the library's
pruning helpers), so its sparsity stays at the target. After its events, the mask invariant holds:
masked weights and their Adam moments are zero.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import pytest

from mtrl_sparse.agents.net_state import MethodContext, NetState
from mtrl_sparse.agents.trees import is_none
from mtrl_sparse.cli import main
from mtrl_sparse.methods.base import (
    DISTRIBUTION_PARAMETER,
    SPARSITY_PARAMETER,
    Method,
    MethodEntry,
    NetworkMethodSettings,
)
from mtrl_sparse.methods.pruning import drop_and_regrow, install_masks
from mtrl_sparse.methods.registry import METHODS, registered
from mtrl_sparse.methods.topology import random_masks
from mtrl_sparse.run_dir import read_config, read_metrics
from support.invariants import assert_mask_invariant, assert_trees_equal
from support.run_checks import complete_checkpoints, deterministic_rows, final_state
from support.sac_vmap import assert_vmapped_equals_separate

NAME = "magdrop"


@dataclass(frozen=True)
class MagDropOptions:
    """Magnitude drop, random regrowth."""

    every_updates: int = 1000
    """Updates between two drop-and-regrow events."""
    fraction: float = 0.2
    """Fraction of each layer's active weights dropped (and as many regrown) per event."""


def check_magdrop_options(options: MagDropOptions) -> None:
    if options.every_updates <= 0:
        raise ValueError(f"magdrop every_updates must be > 0; got {options.every_updates}")
    if not 0.0 <= options.fraction <= 1.0:
        raise ValueError(f"magdrop fraction must be in [0, 1]; got {options.fraction}")


def magdrop(settings: NetworkMethodSettings, options: MagDropOptions) -> Method:
    every = options.every_updates

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, dict]:
        masks = random_masks(params, maskable, settings.sparsity, settings.distribution, key)
        return masks, {"target_sparsity": jnp.asarray(settings.sparsity, jnp.float32),
                       "events": jnp.zeros((), jnp.int32)}

    def transform(net_state: NetState, step: jax.Array, key: jax.Array,
                  context: MethodContext) -> NetState:
        def event(state: NetState) -> NetState:
            leaves, treedef = jax.tree.flatten(state.masks, is_leaf=is_none)
            keys = iter(jax.random.split(key, max(len(leaves), 1)))
            scores = jax.tree.unflatten(treedef, [
                None if m is None else jax.random.uniform(next(keys), m.shape) for m in leaves])
            masks = drop_and_regrow(state.params, state.masks, scores, options.fraction)
            evolved = install_masks(state, masks, context.optimizer)
            return evolved.replace(method_state={
                **state.method_state, "events": state.method_state["events"] + 1})

        is_event = (step % every == 0) & (step >= every)
        return jax.lax.cond(is_event, event, lambda state: state, net_state)

    return Method(init=init, transform=transform)


ENTRY = MethodEntry(
    name=NAME,
    kind="sparsity",
    description="drop the smallest-magnitude weights, regrow as many at random (test plugin)",
    source="tests/methods/test_method_plugin.py",
    build=magdrop,
    options=MagDropOptions,
    check=check_magdrop_options,
    parameters=(SPARSITY_PARAMETER, DISTRIBUTION_PARAMETER),
)

SMOKE_ARGS = ["--preset", "mt10-smoke", "--method", NAME, "--sparsity", "0.8",
              "--critic.method", f"{NAME}+redo", "--methods.redo.tau", "0.3",
              "--methods.redo.every-updates", "20",
              f"--methods.{NAME}.every-updates", "10", f"--methods.{NAME}.fraction", "0.3",
              "--actor.interval-scale", "1", "--critic.interval-scale", "1"]
EVENTS = 8  # 80 updates of the smoke run, an event every 10


def test_without_registration_the_method_is_unknown(capsys, tmp_path):
    # First in the module: the module's plugin fixture has not registered it yet (and other
    # test modules never see it).
    assert NAME not in METHODS
    assert main(["train", *SMOKE_ARGS[:6], "--run-dir", str(tmp_path / "run")]) == 2
    assert f"unknown method {NAME!r}" in capsys.readouterr().err


@pytest.fixture(scope="module")
def plugin():
    """The method registered for this module's tests only."""
    with registered(ENTRY):
        yield ENTRY
    assert NAME not in METHODS


@pytest.fixture(scope="module")
def smoke_run(plugin, tmp_path_factory):
    """The plugin from the CLI flags: the actor runs it alone, the critic composed with ReDo."""
    run_dir = tmp_path_factory.mktemp("plugin") / "run"
    assert main(["train", *SMOKE_ARGS, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.mark.slow
def test_the_plugin_gets_its_flags_and_runs_from_the_cli(smoke_run):
    config = read_config(smoke_run)
    assert getattr(config.methods, NAME) == MagDropOptions(every_updates=10, fraction=0.3)
    assert config.method == NAME and config.critic.method == f"{NAME}+redo"
    rows = [r for r in read_metrics(smoke_run) if "actor_sparsity" in r]
    assert rows[-1][f"actor/{NAME}/events"] == EVENTS
    assert rows[-1][f"critic/{NAME}/events"] == EVENTS
    assert "critic/redo/recycled_total" in rows[-1]
    for row in rows:  # drop and regrow keep the target sparsity
        assert row["actor_sparsity"] == pytest.approx(0.8, abs=0.01)
        assert row["critic_sparsity"] == pytest.approx(0.8, abs=0.01)
    _, state = final_state(smoke_run)
    assert_mask_invariant(state.agent.actor, sparse=True)
    assert_mask_invariant(state.agent.critic, sparse=True)


def test_the_plugin_is_listed_and_its_options_are_checked(plugin, capsys, tmp_path):
    assert main(["methods", NAME]) == 0
    assert f"--methods.{NAME}.every-updates (default 1000)" in capsys.readouterr().out
    bad = [*SMOKE_ARGS, f"--methods.{NAME}.fraction", "2", "--run-dir", str(tmp_path / "bad")]
    assert main(["train", *bad]) == 2
    assert f"--methods.{NAME}: magdrop fraction must be in [0, 1]" in capsys.readouterr().err


def test_the_plugin_composes_and_vmaps_over_target_sparsities(plugin):
    # Two seeds x target sparsities 0.5 / 0.9 in one vmapped program equal four separate runs;
    # every event (the plugin's drop and regrow, ReDo's recycling) fires at every update.
    separate = assert_vmapped_equals_separate(f"{NAME}+redo")
    for state in separate:
        assert int(state.actor.method_state[NAME]["events"]) == 2
        assert_mask_invariant(state.actor, sparse=True)
        assert_mask_invariant(state.critic, sparse=True)


@pytest.mark.slow
def test_the_plugin_resumes_from_a_checkpoint_to_the_same_metrics(smoke_run, tmp_path):
    # A copy of the whole run, cut back to its earliest kept checkpoint as a run killed there
    # would be (its later metric rows kept: resuming discards them), resumes to the same end.
    resumed = tmp_path / "resumed"
    shutil.copytree(smoke_run, resumed)
    stored = json.loads((resumed / "config.json").read_text())
    stored["config"]["run_dir"] = str(resumed)
    (resumed / "config.json").write_text(json.dumps(stored))
    first, *later = complete_checkpoints(resumed)
    assert later, "the run kept one checkpoint only"
    for step in later:
        shutil.rmtree(resumed / "checkpoints" / str(step))
    assert max(r["step"] for r in read_metrics(resumed)) > first

    assert main(["train", "--resume", "--run-dir", str(resumed)]) == 0
    assert deterministic_rows(resumed) == deterministic_rows(smoke_run)
    ref_step, ref_state = final_state(smoke_run)
    step, state = final_state(resumed)
    assert step == ref_step
    assert_trees_equal(state, ref_state)
    assert_mask_invariant(state.agent.actor, sparse=True)
