"""SIGKILLs at random moments and inside checkpoint writes, ten or more per run, for SAC, PPO on
both backends, a vmapped group and a sweep (its parent, and separately a worker): after the last
launch, every run's rows (wall-clock fields aside) and final checkpoint equal an uninterrupted
run's, with no row duplicated or missing. Each launch is the one command of a requeued job
(``train --auto-resume``, or the same ``sweep`` command)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtrl_sparse.cli import main
from support.faults import TESTS_DIR, kill_repeatedly
from support.invariants import assert_trees_equal
from support.run_checks import deterministic_rows, final_state

pytestmark = [pytest.mark.slow, pytest.mark.cpu_numbers]

KILLS = 10
MINIGRID = ["--preset", "minigrid-smoke", "--checkpoint-every-env-steps", "200", "--no-progress"]
CASES = {
    # name: (train arguments, final env step, seconds after launch within which a kill lands)
    "sac-metaworld": (["--preset", "mt10-smoke", "--total-steps", "1200",
                       "--checkpoint-every-env-steps", "400", "--eval-every-env-steps", "400",
                       "--no-progress"], 1200, 12.0),
    "ppo-farama": ([*MINIGRID, "--env.backend", "farama"], 600, 8.0),
    "ppo-jax": ([*MINIGRID, "--env.backend", "jax"], 600, 8.0),
}


def assert_same_run(run: Path, reference: Path) -> None:
    assert deterministic_rows(run) == deterministic_rows(reference)
    step, state = final_state(run)
    ref_step, ref_state = final_state(reference)
    assert step == ref_step
    assert_trees_equal(state, ref_state)


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_killed_ten_times_ends_as_an_uninterrupted_one(case, tmp_path, capsys):
    args, final_step, moment_s = CASES[case]
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(["train", *args, "--run-dir", str(reference)]) == 0
    capsys.readouterr()
    log = kill_repeatedly(["train", *args, "--auto-resume", "--run-dir", str(run)],
                          lambda: [run] if run.exists() else [], KILLS, seed=len(case),
                          final_step=final_step, moment_s=moment_s)
    assert log.kills >= KILLS
    assert log.inside_checkpoint_write >= KILLS // 2
    assert_same_run(run, reference)


def test_a_vmapped_group_killed_ten_times_ends_as_an_uninterrupted_one(tmp_path):
    args = [*MINIGRID, "--env.backend", "jax", "--seeds", "0-1"]
    reference, group = tmp_path / "reference", tmp_path / "group"
    # In a process of its own, as the launches: a group splits over as many CPU devices as it
    # has runs only in a process where JAX has not started yet (the runs' float sums follow).
    whole = subprocess.run([sys.executable, "-m", "mtrl_sparse.cli", "train", *args,
                            "--run-dir", str(reference)], capture_output=True, timeout=600)
    assert whole.returncode == 0, whole.stderr.decode()[-2000:]
    seeds = sorted(p.name for p in reference.iterdir())
    assert len(seeds) == 2
    log = kill_repeatedly(["train", *args, "--auto-resume", "--run-dir", str(group)],
                          lambda: sorted(p for p in group.glob("*") if p.is_dir()), KILLS, seed=7,
                          final_step=600, moment_s=8.0)
    assert log.kills >= KILLS
    assert sorted(p.name for p in group.iterdir()) == seeds
    for name in seeds:
        assert_same_run(group / name, reference / name)


SWEEP = ["sweep", "--preset", "minigrid-smoke", "--method", "dense,gmp", "--sparsity", "0.9",
         "--seeds", "1", "--workers", "1", "--group-size", "1", "--total-steps", "2400",
         "--checkpoint-every-env-steps", "200"]


def sweep_workers(out: Path) -> list[int]:
    """Pids of live worker processes of the sweep in ``out``."""
    found = subprocess.run(["pgrep", "-f", f"mtrl_sparse.sweep {out}"], capture_output=True,
                           text=True).stdout.split()
    return [int(pid) for pid in found]


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def sweep_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR),
                                                        os.environ.get("PYTHONPATH", "")])}


def test_a_sweep_whose_parent_and_workers_are_killed_ends_as_a_clean_one(tmp_path, capsys):
    """Launches of one sweep command until ten kills have landed, in turn: the parent SIGKILLed
    at a random moment (its worker trains on as an orphan beside the next launch), a worker
    SIGKILLed a random while after it started, and the parent with its workers (a node that
    goes away)."""
    clean, out = tmp_path / "clean", tmp_path / "killed"
    assert main([*SWEEP, "--out", str(clean)]) == 0
    capsys.readouterr()
    runs = sorted(p.parent.relative_to(clean) for p in clean.glob("*/*/config.json"))
    assert len(runs) == 2
    kills = {"parent": 0, "worker": 0, "node": 0}
    rng = random.Random(3)
    for attempt in range(4 * KILLS):
        if sum(kills.values()) >= KILLS:
            break
        victim = ("parent", "worker", "node")[attempt % 3]
        process = subprocess.Popen([sys.executable, "-m", "mtrl_sparse.cli", *SWEEP, "--out",
                                    str(out)], env=sweep_env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        if victim == "parent":
            wait_for(lambda p=process: p.poll() is not None, rng.uniform(0.5, 6.0))
        else:  # a worker of this launch, or an orphan of an earlier one
            wait_for(lambda p=process: bool(sweep_workers(out)) or p.poll() is not None, 120)
            time.sleep(rng.uniform(0.0, 1.5))
        workers = sweep_workers(out)
        if process.poll() is None and (victim == "parent" or workers):
            if victim != "worker":
                process.send_signal(signal.SIGKILL)
            for pid in {"parent": [], "worker": workers[:1], "node": workers}[victim]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            kills[victim] += 1
        process.wait(timeout=600)
    wait_for(lambda: not sweep_workers(out), 300)  # orphans finish or release their runs
    finished = subprocess.run([sys.executable, "-m", "mtrl_sparse.cli", *SWEEP, "--out",
                               str(out)], env=sweep_env(), capture_output=True, timeout=600)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert sum(kills.values()) >= KILLS, kills
    assert kills["parent"] >= 2 and kills["worker"] + kills["node"] >= 2, kills
    for run in runs:
        assert_same_run(out / run, clean / run)
