"""Reading a finished run back: its checkpoints, its deterministic metric rows, its final state.
Shared by the run-level tests (resume, reruns) and the plugin test's resume."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import jax
import numpy as np

from mtrl_sparse.agents.tree_paths import path_str
from mtrl_sparse.checkpointing import Checkpointer
from mtrl_sparse.methods.topology import leaf_slices
from mtrl_sparse.run_dir import read_config, read_metrics
from mtrl_sparse.run_loop import AGENT_KINDS

MINIGRID_CHECKPOINTED = ["--preset", "minigrid-smoke", "--checkpoint-every-env-steps", "200",
                         "--no-progress"]
"""A minigrid-smoke run with a checkpoint after each of its 3 rollouts."""


def complete_checkpoints(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def without_wall_clock(rows: list[dict]) -> list[dict]:
    """Metric rows without their wall-clock fields (``time/...``): what a rerun reproduces."""
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def deterministic_rows(run_dir: Path) -> list[dict]:
    """The run's metric rows without their wall-clock fields."""
    return without_wall_clock(read_metrics(run_dir))


def final_state(run_dir: Path):
    """(env step, device state) of the run's latest checkpoint, whatever its agent."""
    return checkpoint_states(run_dir, latest_only=True)[0]


def checkpoint_states(run_dir: Path, latest_only: bool = False) -> list:
    """[(env step, host state)] of every checkpoint of the run (or its latest), in step order,
    whatever its agent."""
    config = read_config(run_dir)
    checkpointer = Checkpointer(run_dir / "checkpoints", config.keep_checkpoints)
    run = AGENT_KINDS[config.AGENT](config)
    try:
        steps = [checkpointer.latest_step()] if latest_only else complete_checkpoints(run_dir)
        states = [(step, jax.device_get(checkpointer.restore(step, run.abstract_state())[0]))
                  for step in steps]
    finally:
        run.close()
        checkpointer.close()
    return states


def empty_layers(masks, layer_slices) -> list[str]:
    """The masked layers of ``masks`` with no active weight, a leaf stacking layers
    (``layer_slices``: per-task heads) counted slice by slice (``path[task t]``)."""
    empty = []
    for path, mask in jax.tree_util.tree_flatten_with_path(masks)[0]:
        slices = leaf_slices(path, layer_slices)
        parts = [mask] if slices is None else np.split(np.asarray(mask), slices[1], slices[0])
        for t, part in enumerate(parts):
            if not np.any(part):
                empty.append(path_str(path) + ("" if slices is None else f"[task {t}]"))
    return empty


def assert_rows_close(rows: list[dict], expected: list[dict], rtol: float = 1e-4,
                      atol: float = 1e-7) -> None:
    """The same rows with the same fields; integers, strings and None equal, floats equal up to
    ``rtol`` / ``atol`` (float32 rounding of batched against unbatched arithmetic)."""
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert row.keys() == want.keys(), (row.get("step"), row.keys() ^ want.keys())
        for key, value in want.items():
            if isinstance(value, float) and isinstance(row[key], float):
                assert math.isclose(row[key], value, rel_tol=rtol, abs_tol=atol), (
                    row["step"], key, row[key], value)
            else:
                assert row[key] == value, (row["step"], key, row[key], value)


def assert_resumes_like_uninterrupted(full: Path, copy: Path, last_checkpoint: int) -> None:
    """A copy of the finished run ``full`` without its checkpoint at ``last_checkpoint``,
    resumed from the one before, ends with the same deterministic rows as ``full``."""
    from mtrl_sparse.cli import main  # the CLI imports every agent; only resume tests need it

    shutil.copytree(full, copy)
    shutil.rmtree(copy / "checkpoints" / str(last_checkpoint))
    assert main(["train", "--resume", "--run-dir", str(copy)]) == 0
    assert deterministic_rows(copy) == deterministic_rows(full)
