"""Reading a finished run back: its checkpoints, its deterministic metric rows, its final state.
Shared by the run-level tests (resume, reruns) and the plugin test's resume."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import jax

from mtrl_sparse.checkpointing import Checkpointer
from mtrl_sparse.off_policy import make_envs, make_run_learner
from mtrl_sparse.run_dir import read_config, read_metrics


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
    config = read_config(run_dir)
    checkpointer = Checkpointer(run_dir / "checkpoints", config.keep_checkpoints)
    env, eval_env = make_envs(config)
    try:
        step = checkpointer.latest_step()
        learner = make_run_learner(config, env.spec, eval_env.spec)
        state, _ = checkpointer.restore(step, learner.abstract_state())
    finally:
        env.close()
        eval_env.close()
        checkpointer.close()
    return step, jax.device_get(state)


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
