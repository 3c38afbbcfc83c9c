"""A SIGKILLed run resumes from its last checkpoint and ends bit for bit like a whole one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtrl_sparse.cli import main
from mtrl_sparse.run_dir import read_config, read_metrics
from support.invariants import assert_trees_equal
from support.run_checks import complete_checkpoints, deterministic_rows, final_state

ARGS = ["--preset", "mt10-smoke", "--method", "static", "--sparsity", "0.9",
        "--total-steps", "2000", "--checkpoint-every-env-steps", "600", "--eval-every-env-steps",
        "500"]

# Trains on Meta-World: a whole run, a killed one and its resumptions.
pytestmark = [pytest.mark.slow, pytest.mark.cpu_numbers]


def kill_between_checkpoints(run_dir: Path) -> int:
    """Start a run in a subprocess; SIGKILL it once a checkpoint exists and later rows were
    logged after it (before the next checkpoint). Returns the last checkpoint's env step."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mtrl_sparse.cli", "train", *ARGS, "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"run ended before it could be killed: {process.stderr.read()!r}")
            steps = complete_checkpoints(run_dir)
            if steps:
                rows = read_metrics(run_dir)
                if any(r["step"] > steps[-1] for r in rows):
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
                    return steps[-1]
            time.sleep(0.005)
        pytest.fail("no checkpoint followed by metric rows within 300 s")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigkilled_run_resumes_to_the_same_metrics_and_params(tmp_path, capsys):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert main(["train", *ARGS, "--run-dir", str(reference)]) == 0

    killed_at = kill_between_checkpoints(interrupted)
    assert killed_at < 2000
    assert max(r["step"] for r in read_metrics(interrupted)) > killed_at

    assert main(["train", "--resume", "--run-dir", str(interrupted)]) == 0
    capsys.readouterr()
    assert deterministic_rows(interrupted) == deterministic_rows(reference)
    ref_step, ref_state = final_state(reference)
    step, state = final_state(interrupted)
    assert step == ref_step == 2000
    assert_trees_equal(state, ref_state)

    # Raising the budget continues the finished run from its final checkpoint.
    assert main(["train", "--resume", "--run-dir", str(interrupted), "--total-steps", "2400"]) == 0
    rows = read_metrics(interrupted)
    assert max(r["step"] for r in rows) == 2400
    assert read_config(interrupted).total_env_steps == 2400
    assert complete_checkpoints(interrupted)[-1] == 2400
