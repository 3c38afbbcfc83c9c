"""``mtrl-sparse sweep``: the grid and its names, bad input, and (slow) sweeps of the smoke preset
that resume after a kill, equal runs executed alone, and run on a local Ray instance."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from mtrl_sparse.run_dir import read_finished
from mtrl_sparse.sweep import (
    MANIFEST_FILE,
    Monitor,
    SweepRun,
    SweepSpec,
    check_out_dir,
    check_spec,
    expand_grid,
    parse_sweep_seeds,
    plan_groups,
    spec_from_toml,
    train_arguments,
    try_lock,
    write_manifest,
)
from mtrl_sparse.sweep import main as sweep_worker
from mtrl_sparse.train_args import UsageError, parse_train_args
from support.cli import assert_usage_error, run_cli
from support.run_checks import assert_rows_close, complete_checkpoints, deterministic_rows

SMOKE_SWEEP = ["--preset", "minigrid-smoke", "--method", "dense,gmp", "--sparsity", "0.9",
               "--seeds", "2", "--checkpoint-every-env-steps", "200", "--keep-checkpoints", "5"]


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "scripts").glob("*.toml")),
                         ids=lambda p: p.name)
def test_the_grids_shipped_in_scripts_validate_in_every_cell(path):
    """Every run of every TOML grid the project ships passes config validation (methods,
    sparsities and options on its preset), as the sweep checks before it starts anything."""
    spec, _ = spec_from_toml(path)
    assert expand_grid(spec)
    check_spec(spec)


def test_the_grid_gives_sparse_methods_every_sparsity_and_dense_style_methods_none():
    spec = SweepSpec(preset="minigrid-smoke", methods=("dense", "gmp", "redo", "gmp+redo"),
                     sparsities=(0.9, 0.95), seeds=(0, 1))
    names = [run.name for run in expand_grid(spec)]
    assert names == [
        "dense/seed0", "dense/seed1",
        "gmp-sparsity0.9/seed0", "gmp-sparsity0.9/seed1",
        "gmp-sparsity0.95/seed0", "gmp-sparsity0.95/seed1",
        "redo/seed0", "redo/seed1",
        "gmp+redo-sparsity0.9/seed0", "gmp+redo-sparsity0.9/seed1",
        "gmp+redo-sparsity0.95/seed0", "gmp+redo-sparsity0.95/seed1",
    ]


def test_a_sequential_grid_adds_each_tasks_single_task_reference_per_seed():
    """Under a sequential schedule the grid ends with one dense reference run per task (in the
    schedule's order) and seed, trained on that task alone for one phase's env steps with the
    sweep's other flags; --no-references (references=False) and the multi-task schedule plan
    none."""
    flags = ("--schedule", "sequential", "--total-env-steps", "1200")
    spec = SweepSpec(preset="minigrid-smoke", methods=("gmp",), sparsities=(0.9,), seeds=(0, 1),
                     train_args=flags)
    runs = expand_grid(spec)
    tasks = ("MiniGrid-LavaGapS7-v0", "MiniGrid-RedBlueDoors-6x6-v0", "MiniGrid-MemoryS11-v0")
    assert [r.name for r in runs[2:]] == [f"reference-{t}/seed{s}" for t in tasks for s in (0, 1)]
    assert all(r.method == "dense" and r.sparsity is None for r in runs[2:])
    args = train_arguments(spec, runs[2], Path("out"))
    config, _, _ = parse_train_args(args)
    assert (config.task_names(), config.schedule, config.total_env_steps, config.method) == (
        (tasks[0],), "multitask", 400, "dense")
    assert config.ppo == parse_train_args(train_arguments(spec, runs[0], Path("o")))[0].ppo
    check_spec(spec)
    assert len(expand_grid(dataclasses.replace(spec, references=False))) == 2
    assert len(expand_grid(dataclasses.replace(spec, train_args=()))) == 2


def test_sac_references_run_one_meta_world_task_with_the_multitask_replay():
    """cw10-smoke with --replay cumulative: each reference is MT1 of its task with the default
    replay (a multi-task run refuses cumulative), and the whole grid validates."""
    spec = SweepSpec(preset="cw10-smoke", methods=("dense",), sparsities=(), seeds=(0,),
                     train_args=("--replay", "cumulative"))
    check_spec(spec)
    reference = expand_grid(spec)[1]
    config, _, _ = parse_train_args(train_arguments(spec, reference, Path("out")))
    assert (config.env.benchmark, config.task_names(), config.replay, config.total_env_steps) == (
        "MT1", ("hammer-v3",), "current", 40)


def test_a_sweep_written_before_references_resumes_and_plans_them(tmp_path):
    """A sweep.json without the references key (written before them) is the same sweep as the
    default grid, and its reference runs join the plan; reference runs of one task group
    together, never with the method's runs."""
    spec = SweepSpec(preset="minigrid-smoke", methods=("dense",), sparsities=(), seeds=(0, 1),
                     train_args=("--schedule", "sequential", "--total-env-steps", "1200"))
    out = tmp_path / "s"
    write_manifest(out, spec)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    del manifest["spec"]["references"]
    manifest["runs"] = [r for r in manifest["runs"] if "task" not in r]
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert check_out_dir(out, spec) is True
    groups = plan_groups(out, expand_grid(spec), group_size=8)
    assert [[r.name for r in g] for g in groups] == [
        ["dense/seed0", "dense/seed1"],
        *[[f"reference-{t}/seed0", f"reference-{t}/seed1"]
          for t in ("MiniGrid-LavaGapS7-v0", "MiniGrid-RedBlueDoors-6x6-v0",
                    "MiniGrid-MemoryS11-v0")]]
    with pytest.raises(UsageError, match="references"):
        check_out_dir(out, dataclasses.replace(spec, references=False))


@pytest.mark.parametrize(("text", "seeds"), [("3", (0, 1, 2)), ("2-4", (2, 3, 4)),
                                             ("1,5", (1, 5)), ([7, 8], (7, 8))])
def test_seeds_are_a_count_a_range_or_a_list(text, seeds):
    assert parse_sweep_seeds(text) == seeds


def test_groups_hold_one_method_and_are_balanced(tmp_path):
    runs = ([SweepRun("gmp", s, seed) for s in (0.9, 0.95) for seed in range(5)]
            + [SweepRun("dense", None, seed) for seed in range(3)])
    groups = plan_groups(tmp_path, runs, group_size=8)
    assert [len(g) for g in groups] == [5, 5, 3]  # 10 gmp runs by 8: two groups of 5
    assert all(len({run.method for run in g}) == 1 for g in groups)
    assert sorted(run.name for g in groups for run in g) == sorted(run.name for run in runs)


def test_a_different_grid_on_the_same_out_is_refused_and_the_same_resumes(tmp_path):
    spec = SweepSpec(preset="minigrid-smoke", methods=("dense",), sparsities=(), seeds=(0,))
    write_manifest(tmp_path / "s", spec)
    assert check_out_dir(tmp_path / "s", spec) is True
    with pytest.raises(UsageError, match="holds a different sweep .*seeds"):
        check_out_dir(tmp_path / "s", SweepSpec(preset="minigrid-smoke", methods=("dense",),
                                                sparsities=(), seeds=(0, 1)))


MALFORMED_TOML = "preset = 'minigrid-smoke'\nmethods = ['dense'\n"
UNKNOWN_KEY_TOML = "preset = 'minigrid-smoke'\nmethods = ['dense']\nseeds = 2\nlr = 3\n"
REFERENCES_TOML = "preset = 'minigrid-smoke'\nmethods = ['dense']\nseeds = 2\nreferences = 'no'\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--preset", "minigrid-smoke", "--method", "dense,gmpp", "--sparsity", "0.9",
      "--seeds", "2"], "unknown method 'gmpp'"),
    (["--preset", "minigrid-smoke", "--method", "gmp", "--sparsity", "0.9,1.5",
      "--seeds", "2"], "in (0, 1)"),
    (["--preset", "minigrid-smoke", "--method", "gmp", "--seeds", "2"], "need --sparsity"),
    (["--preset", "minigrid-smokee", "--method", "dense", "--seeds", "2"], "unknown preset"),
    (["--preset", "minigrid-smoke", "--method", "dense", "--seeds", "2", "--seed", "3"],
     "--seed is set by the sweep"),
    (["--preset", "minigrid-smoke", "--method", "dense", "--seeds", "2", "--ppo.actor-lr", "x"],
     "ppo.actor-lr"),
    (["--preset", "minigrid-smoke", "--method", "dense", "--seeds", "two"], "--seeds"),
    (["--preset", "minigrid-smoke", "--method", "dense", "--seeds", "2", "--backend", "slurm"],
     "accepted: local, ray"),
    (["--file", "{tmp}/bad.toml"], "not valid TOML"),
    (["--file", "{tmp}/unknown.toml"], "unknown keys lr"),
    (["--file", "{tmp}/references.toml"], "references must be true or false"),
    (["--file", "{tmp}/unknown.toml", "--no-references"], "--no-references"),
])
def test_bad_sweep_input_is_one_line_exit_2_and_creates_nothing(tmp_path, capsys, args, message):
    (tmp_path / "bad.toml").write_text(MALFORMED_TOML)
    (tmp_path / "unknown.toml").write_text(UNKNOWN_KEY_TOML)
    (tmp_path / "references.toml").write_text(REFERENCES_TOML)
    out = tmp_path / "sweep"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_usage_error(capsys, ["sweep", *args, "--out", str(out)], message)
    assert not out.exists()


def test_an_out_holding_another_sweep_or_other_files_is_refused_unchanged(tmp_path, capsys):
    out = tmp_path / "sweep"
    write_manifest(out, SweepSpec(preset="minigrid-smoke", methods=("dense",), sparsities=(),
                                  seeds=(0,)))
    before = (out / MANIFEST_FILE).read_text()
    assert_usage_error(capsys, ["sweep", "--preset", "minigrid-smoke", "--method", "dense",
                                "--seeds", "2", "--out", str(out)], "holds a different sweep")
    assert (out / MANIFEST_FILE).read_text() == before
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert_usage_error(capsys, ["sweep", "--preset", "minigrid-smoke", "--method", "dense",
                                "--seeds", "2", "--out", str(other)], "holds no sweep")
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_the_ray_backend_without_ray_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = tmp_path / "sweep"
    assert_usage_error(capsys, ["sweep", "--preset", "minigrid-smoke", "--method", "dense",
                                "--seeds", "1", "--backend", "ray", "--out", str(out)],
                       "mtrl-sparse[ray]")
    assert not out.exists()


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_rerunning_finished_runs(tmp_path, capsys):
    """A complete sweep; then one run as a kill leaves it (no finished mark, its last checkpoint
    gone): the same command trains only that run, from its checkpoint, and its metrics end
    without duplicated rows, equal to the uninterrupted run's."""
    out = tmp_path / "sweep"
    code, stdout, _ = run_cli(capsys, ["sweep", *SMOKE_SWEEP, "--out", str(out)])
    assert code == 0, stdout
    assert "4 runs finished, 0 failed" in stdout
    names = ["dense/seed0", "dense/seed1", "gmp-sparsity0.9/seed0", "gmp-sparsity0.9/seed1"]
    for name in names:
        assert read_finished(out / name)["env_steps"] == 600
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert [run["name"] for run in manifest["runs"]] == names
    complete = {name: deterministic_rows(out / name) for name in names}
    mtimes = {name: os.stat(out / name / "metrics.jsonl").st_mtime_ns for name in names}

    killed = out / "gmp-sparsity0.9/seed1"
    (killed / "finished.json").unlink()
    steps = complete_checkpoints(killed)
    shutil.rmtree(killed / "checkpoints" / str(steps[-1]))
    code, stdout, _ = run_cli(capsys, ["sweep", *SMOKE_SWEEP, "--out", str(out)])
    assert code == 0, stdout
    assert stdout.startswith("resuming sweep")
    assert read_finished(killed)["env_steps"] == 600
    assert_rows_close(deterministic_rows(killed), complete["gmp-sparsity0.9/seed1"])
    for name in names[:3]:  # the finished runs were not touched
        assert os.stat(out / name / "metrics.jsonl").st_mtime_ns == mtimes[name]

    code, stdout, _ = run_cli(capsys, ["sweep", *SMOKE_SWEEP, "--out", str(out)])
    assert code == 0 and "4 runs finished" in stdout  # nothing left to do


@pytest.mark.slow
def test_a_sweep_run_equals_the_same_run_trained_alone(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, _ = run_cli(capsys, ["sweep", "--preset", "minigrid-smoke", "--method", "gmp",
                                       "--sparsity", "0.8,0.9", "--seeds", "1",
                                       "--out", str(out)])
    assert code == 0, stdout
    alone = tmp_path / "alone"
    code, _, err = run_cli(capsys, ["train", "--preset", "minigrid-smoke", "--method", "gmp",
                                    "--sparsity", "0.9", "--seed", "0", "--run-dir", str(alone),
                                    "--no-progress"])
    assert code == 0, err
    assert_rows_close(deterministic_rows(out / "gmp-sparsity0.9/seed0"),
                      deterministic_rows(alone))


@pytest.mark.slow
def test_a_failed_group_is_listed_and_does_not_stop_the_sweep(tmp_path, capsys):
    out = tmp_path / "sweep"
    spec_args = ["--preset", "minigrid-smoke", "--method", "dense,redo", "--seeds", "1"]
    write_manifest(out, SweepSpec(preset="minigrid-smoke", methods=("dense", "redo"),
                                  sparsities=(), seeds=(0,)))
    (out / "dense" / "seed0").mkdir(parents=True)
    (out / "dense" / "seed0" / "checkpoints").mkdir()
    (out / "dense" / "seed0" / "checkpoints" / "200").mkdir()  # a checkpoint it cannot read
    code, stdout, _ = run_cli(capsys, ["sweep", *spec_args, "--out", str(out)])
    assert code == 1
    assert "1 runs finished, 1 failed" in stdout
    assert "dense/seed0: " in stdout
    assert read_finished(out / "redo/seed0") is not None


@pytest.mark.slow
def test_the_ray_backend_on_a_local_instance(tmp_path, capsys):
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    code, stdout, _ = run_cli(capsys, ["sweep", "--preset", "minigrid-smoke", "--method",
                                       "dense", "--seeds", "2", "--backend", "ray",
                                       "--out", str(out)])
    assert code == 0, stdout
    for seed in (0, 1):
        assert read_finished(Path(out) / f"dense/seed{seed}")["env_steps"] == 600


def test_the_plain_progress_prints_a_line_per_change_of_state_only(tmp_path, capsys):
    runs = [SweepRun("dense", None, 0), SweepRun("dense", None, 1)]
    monitor = Monitor(tmp_path, runs, interactive=False)
    for _ in range(3):
        monitor.update([runs], [])
    monitor.update([], [])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert "running 2" in lines[0] and "pending 0" in lines[0]
    assert "running 0" in lines[1] and "pending 2" in lines[1]


def test_a_worker_leaves_a_run_that_a_live_process_holds(tmp_path, capsys):
    out = tmp_path / "sweep"
    write_manifest(out, SweepSpec(preset="minigrid-smoke", methods=("dense",), sparsities=(),
                                  seeds=(0,)))
    fd = try_lock(out, "dense/seed0")  # an orphaned worker of a killed sweep
    try:
        assert sweep_worker([str(out), "dense/seed0"]) == 1
    finally:
        os.close(fd)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "being trained by another live process" in err[0], err
    assert not (out / "dense" / "seed0").exists()


@pytest.mark.slow
def test_a_restarted_sweep_waits_for_a_run_that_a_live_orphan_trains(tmp_path, capsys):
    """An orphaned worker of a killed sweep still holds dense/seed0: the restarted sweep trains
    the other run, waits, and trains dense/seed0 only once the orphan has let it go."""
    out = tmp_path / "sweep"
    write_manifest(out, SweepSpec(preset="minigrid-smoke", methods=("dense",), sparsities=(),
                                  seeds=(0, 1)))
    fd = try_lock(out, "dense/seed0")
    released = []

    def release() -> None:
        released.append(time.time())
        os.close(fd)

    timer = threading.Timer(30.0, release)
    timer.start()
    try:
        code, stdout, _ = run_cli(capsys, ["sweep", "--preset", "minigrid-smoke", "--method",
                                           "dense", "--seeds", "2", "--group-size", "1",
                                           "--workers", "1", "--out", str(out)])
    finally:
        timer.join()
    assert code == 0, stdout
    assert read_finished(out / "dense" / "seed0") is not None
    assert (out / "dense" / "seed0" / "config.json").stat().st_mtime >= released[0]
    assert (out / "dense" / "seed1" / "config.json").stat().st_mtime < released[0]
