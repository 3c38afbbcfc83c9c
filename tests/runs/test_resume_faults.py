"""What a cluster does to a run, and the one command that continues it: a run killed before its
first checkpoint starts afresh on ``--resume``; a latest checkpoint that does not read back is
set aside and the run resumes from the one before; ``--auto-resume`` continues a run or group if
its directory holds one and starts it otherwise. Each ends with the rows of an uninterrupted
run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtrl_sparse.cli import main
from mtrl_sparse.run_dir import read_metrics
from support.run_checks import MINIGRID_CHECKPOINTED, complete_checkpoints, deterministic_rows

ARGS = MINIGRID_CHECKPOINTED

pytestmark = pytest.mark.slow



def test_a_run_killed_before_its_first_checkpoint_starts_afresh_on_resume(whole_run, tmp_path,
                                                                           capsys):
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)  # as if killed after logging, before any checkpoint
    shutil.rmtree(run / "checkpoints")
    (run / "finished.json").unlink()
    assert main(["train", "--resume", "--run-dir", str(run)]) == 0
    assert "holds no checkpoint yet; the run starts afresh" in capsys.readouterr().err
    assert deterministic_rows(run) == deterministic_rows(whole_run)


@pytest.fixture(scope="module")
def other_run(tmp_path_factory) -> Path:
    """Another run (seed 1) with checkpoints at the same env steps."""
    run = tmp_path_factory.mktemp("other") / "run"
    assert main(["train", *ARGS, "--seed", "1", "--run-dir", str(run)]) == 0
    return run


def tear(checkpoint: Path, other: Path) -> None:
    """Every file of the checkpoint cut in half (a torn write)."""
    del other
    for file in checkpoint.rglob("*"):
        if file.is_file() and file.stat().st_size > 0:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def flip_bytes(checkpoint: Path, other: Path) -> None:
    """Eight bytes inverted in the largest array file (the storage reads it back silently)."""
    del other
    largest = max((f for f in checkpoint.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    data = bytearray(largest.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 8):
        data[i] ^= 0xFF
    largest.write_bytes(bytes(data))


def drop_commit_marker(checkpoint: Path, other: Path) -> None:
    del other
    (checkpoint / "commit_success.txt").unlink()


def metadata_of_another_run(checkpoint: Path, other: Path) -> None:
    shutil.rmtree(checkpoint / "meta")
    shutil.copytree(other / "checkpoints" / checkpoint.name / "meta", checkpoint / "meta")


@pytest.mark.parametrize(("damage", "reason"), [
    (tear, ""), (flip_bytes, "its state differs from what was saved"),
    (drop_commit_marker, "commit marker (commit_success.txt) is missing"),
    (metadata_of_another_run, "it belongs to another run"),
])
def test_a_damaged_latest_checkpoint_is_set_aside_in_one_line_and_the_one_before_resumes(
        whole_run, other_run, tmp_path, capsys, damage, reason):
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    (run / "finished.json").unlink()
    damage(run / "checkpoints" / "600", other_run)
    assert main(["train", "--resume", "--run-dir", str(run)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "mtrl-sparse" in line]
    assert len(lines) == 1, lines
    assert "the checkpoint at env step 600 does not read back" in lines[0] and reason in lines[0]
    assert (run / "checkpoints" / "600.unreadable").is_dir()  # kept, out of the run's sight
    assert complete_checkpoints(run) == [200, 400, 600]  # 600 saved again
    assert deterministic_rows(run) == deterministic_rows(whole_run)


def test_eval_of_a_damaged_checkpoint_is_one_line_and_exit_2(whole_run, other_run, tmp_path,
                                                              capsys):
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    flip_bytes(run / "checkpoints" / "600", other_run)
    code = main(["eval", "--run-dir", str(run)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "the checkpoint at env step 600" in lines[0]
    assert "differs from what was saved" in lines[0]
    assert not (run / "eval").exists()


def test_no_readable_checkpoint_is_one_line_and_exit_2(whole_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    for step in (200, 400, 600):
        for file in (run / "checkpoints" / str(step)).rglob("*"):
            if file.is_file():
                file.write_bytes(b"")
    assert main(["train", "--resume", "--run-dir", str(run)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot resume" in last and "no checkpoint reads back" in last, last


def test_auto_resume_starts_a_run_then_continues_it(whole_run, tmp_path, capsys):
    run = tmp_path / "run"
    # A first attempt killed after its first checkpoint: a copy cut back to step 200.
    assert main(["train", *ARGS, "--run-dir", str(run), "--auto-resume"]) == 0  # starts it
    assert deterministic_rows(run) == deterministic_rows(whole_run)
    for step in (400, 600):
        shutil.rmtree(run / "checkpoints" / str(step))
    (run / "finished.json").unlink()
    assert main(["train", *ARGS, "--run-dir", str(run), "--auto-resume"]) == 0  # continues
    assert deterministic_rows(run) == deterministic_rows(whole_run)
    rows = len(read_metrics(run))
    assert main(["train", *ARGS, "--run-dir", str(run), "--auto-resume"]) == 0  # finished
    assert len(read_metrics(run)) == rows
    capsys.readouterr()


def test_auto_resume_continues_a_vmapped_group(tmp_path):
    """Both commands in processes of their own, as a requeued job runs them: a group splits
    over as many CPU devices as it has runs only where JAX has not started yet, and the float
    sums of its runs follow that split."""
    group = tmp_path / "group"
    flags = [*ARGS, "--seeds", "0-1", "--run-dir", str(group), "--auto-resume"]

    def train() -> None:
        done = subprocess.run([sys.executable, "-m", "mtrl_sparse.cli", "train", *flags],
                              capture_output=True, timeout=600)
        assert done.returncode == 0, done.stderr.decode()[-2000:]

    train()
    whole = {name: deterministic_rows(group / name) for name in ("seed0", "seed1")}
    for name in whole:
        shutil.rmtree(group / name / "checkpoints" / "600")
        (group / name / "finished.json").unlink()
    train()
    assert {name: deterministic_rows(group / name) for name in whole} == whole


@pytest.mark.parametrize(("extra", "expected"), [
    (["--resume"], "give --resume or --auto-resume, not both"),
    ([], "--auto-resume needs --run-dir"),
])
def test_auto_resume_usage_errors(tmp_path, capsys, extra, expected):
    args = ["train", *ARGS, "--auto-resume", *extra]
    if extra:
        args += ["--run-dir", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "run").exists()
