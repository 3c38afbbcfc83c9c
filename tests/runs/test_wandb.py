"""Weights & Biases tracking (``--track``), exercised offline: runs are trained with
``WANDB_MODE=offline`` and their W&B runs read back from the offline transaction logs.

A tracked run records every metrics row (under TensorBoard's names, at W&B step = env step), the
resolved config, the run directory and the code version; a resumed run continues the same W&B
run without the flags retyped; a sweep groups its runs and names them; tracking changes no number;
bad W&B input and a missing wandb are one line, exit 2, nothing written."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
from importlib import metadata
from pathlib import Path

import pytest

from mtrl_sparse.cli import main
from mtrl_sparse.config import WandbConfig
from mtrl_sparse.mask_stats import per_task_labels
from mtrl_sparse.on_policy import OnPolicyRun
from mtrl_sparse.presets import PRESETS
from mtrl_sparse.report import varying_fields
from mtrl_sparse.run_axis import check_same_program
from mtrl_sparse.run_dir import read_config, read_metrics, scalars_of
from mtrl_sparse.sweep import SweepRun, SweepSpec, check_spec, train_arguments
from support.cli import assert_usage_error, run_cli
from support.optional import needs_wandb
from support.run_checks import MINIGRID_CHECKPOINTED, deterministic_rows
from support.wandb_log import OfflineRun, offline_runs

TRACKED = [*MINIGRID_CHECKPOINTED, "--track"]
"""The ``whole_run`` fixture's run (minigrid-smoke, a checkpoint per rollout), tracked."""


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline and silent, its settings and caches in the test's directory; no WANDB_DIR
    (W&B's files go to each run directory) nor WANDB_PROJECT unless a test sets them."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / variable.lower()))
    for variable in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(variable, raising=False)


def assert_history_is_the_rows(history: list[dict], run_dir: Path) -> None:
    """The W&B history holds every metrics row of ``run_dir`` under TensorBoard's names
    (``scalars_of``), rows of one env step in the W&B row of that step, and nothing else."""
    rows = read_metrics(run_dir)
    prefix = "eval/normalized_return/"
    tasks = tuple(dict.fromkeys(k.removeprefix(prefix) for r in rows for k in r
                                if k.startswith(prefix)))
    expected: dict[int, dict] = {}
    for row in rows:  # the per-task lists of the masks' statistics are labelled by task
        expected.setdefault(row["step"], {}).update(scalars_of(row, per_task_labels(tasks)))
    logged = {entry["_step"]: {k: v for k, v in entry.items() if not k.startswith("_")}
              for entry in history}
    assert sorted(logged) == sorted(expected) == sorted({row["step"] for row in rows})
    for step, scalars in expected.items():
        assert logged[step] == scalars, step
    evals = [row for row in rows if "eval/normalized_return" in row]
    assert evals and all(logged[row["step"]]["eval/normalized_return"]
                         == row["eval/normalized_return"] for row in evals)


def assert_config_is_the_runs(run: OfflineRun, run_dir: Path) -> None:
    """The W&B config is ``config.json``'s resolved config, with the run directory's absolute
    path, the preset, the run's id and its provenance (the code version)."""
    stored = json.loads((run_dir / "config.json").read_text())
    recorded = {k: v for k, v in run.config.items() if k != "_wandb"}
    assert recorded.pop("run_dir") == str(run_dir.resolve())
    provenance = recorded.pop("provenance")
    assert provenance == stored["provenance"]
    assert provenance["versions"]["mtrl-sparse"] == metadata.version("mtrl-sparse")
    assert "git_commit" in provenance
    assert {k: recorded.pop(k) for k in ("agent", "preset", "run_id")} == {
        "agent": "ppo", "preset": "minigrid-smoke", "run_id": stored["run_id"]}
    assert recorded == {k: v for k, v in stored["config"].items() if k != "run_dir"}


# --- tracked runs (slow: each trains minigrid-smoke) --------------------------------------------

@needs_wandb
@pytest.mark.slow
def test_a_tracked_run_records_its_rows_config_and_code_version_and_changes_no_number(
        whole_run, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *TRACKED, "--wandb.tags", "smoke", "first", "--run-dir",
                 str(run_dir)]) == 0
    assert deterministic_rows(run_dir) == deterministic_rows(whole_run)
    assert not (whole_run / "wandb_id").exists() and not (whole_run / "wandb").exists()

    [run] = offline_runs(run_dir / "wandb")
    assert run.run_id == (run_dir / "wandb_id").read_text().strip()
    assert (run.name, run.group, run.tags, run.exit_code) == ("run", "", ["smoke", "first"], 0)
    assert_history_is_the_rows(run.history, run_dir)
    assert_config_is_the_runs(run, run_dir)
    assert run.config["wandb"]["track"] is True


@needs_wandb
@pytest.mark.slow
def test_a_tracked_run_with_videos_logs_each_tasks_gif_to_its_wandb_run(tmp_path):
    """With ``--video-every-env-steps``, the GIFs written at an evaluation go to the W&B run as
    videos ``video/<task>`` at that env step; its scalars stay the rows'."""
    run_dir = tmp_path / "run"
    assert main(["train", *TRACKED, "--video-every-env-steps", "400", "--run-dir",
                 str(run_dir)]) == 0
    [run] = offline_runs(run_dir / "wandb")
    tasks = sorted(gif.stem for gif in (run_dir / "videos" / "step_400").glob("*.gif"))
    assert len(tasks) == 3, tasks  # minigrid-smoke: MT3
    videos = {entry["_step"]: {k: v for k, v in entry.items() if k.startswith("video/")}
              for entry in run.history}
    assert {step for step, logged in videos.items() if logged} == {400}
    # the history flattens a logged wandb.Video into its fields: video/<task>/_type, /path, ...
    assert {key.rsplit("/", 1)[0] for key in videos[400]} == {f"video/{t}" for t in tasks}
    for task in tasks:
        assert videos[400][f"video/{task}/_type"] == "video-file", videos[400]
        assert videos[400][f"video/{task}/path"].endswith(".gif"), videos[400]
    scalars = [{k: v for k, v in entry.items() if not k.startswith("video/")}
               for entry in run.history]
    assert_history_is_the_rows(scalars, run_dir)


@needs_wandb
@pytest.mark.slow
def test_a_preempted_tracked_run_resumes_its_wandb_run_without_the_flags(
        whole_run, tmp_path, capsys, monkeypatch):
    """Stopped by SIGTERM after its checkpoint at env step 400, the run's W&B run finishes with
    the exit status 75; ``--auto-resume`` (no W&B flag) continues the same W&B run, which ends
    with the rows of an uninterrupted run (``WANDB_DIR`` chooses where W&B's files go)."""
    run_dir, wandb_dir = tmp_path / "run", tmp_path / "wandb-dir"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    iterate, calls = OnPolicyRun.iterate, []

    def signalled_iterate(self, episodes):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return iterate(self, episodes)

    monkeypatch.setattr(OnPolicyRun, "iterate", signalled_iterate)
    code, _, _ = run_cli(capsys, ["train", *TRACKED, "--checkpoint-every-env-steps", "600",
                                  "--wandb.project", "resumed", "--run-dir", str(run_dir)])
    assert code == 75
    monkeypatch.setattr(OnPolicyRun, "iterate", iterate)
    assert main(["train", "--auto-resume", "--run-dir", str(run_dir)]) == 0
    assert deterministic_rows(run_dir) == deterministic_rows(whole_run)

    first, resumed = offline_runs(wandb_dir / "wandb")
    assert first.run_id == resumed.run_id == (run_dir / "wandb_id").read_text().strip()
    assert (first.exit_code, resumed.exit_code) == (75, 0)
    assert [entry["_step"] for entry in first.history] == [200, 400]
    assert [entry["_step"] for entry in resumed.history] == [600]
    assert_history_is_the_rows(first.history + resumed.history, run_dir)
    assert_config_is_the_runs(resumed, run_dir)
    assert resumed.config["wandb"]["project"] == "resumed"
    assert not (run_dir / "wandb").exists()


@needs_wandb
@pytest.mark.slow
def test_a_tracked_sweep_groups_its_runs_and_names_them_by_method_sparsity_and_seed(
        tmp_path, capsys):
    """Two runs vmapped in one worker process, each with its own W&B run and rows."""
    out = tmp_path / "sweep-a"
    code, _, _ = run_cli(capsys, ["sweep", "--preset", "minigrid-smoke", "--method", "gmp",
                                  "--sparsity", "0.9", "--seeds", "2", "--group-size", "2",
                                  "--track", "--out", str(out)])
    assert code == 0, [log.read_text()[-2000:] for log in (out / "logs").glob("*.log")]
    for seed in (0, 1):
        run_dir = out / "gmp-sparsity0.9" / f"seed{seed}"
        [run] = offline_runs(run_dir / "wandb")
        assert (run.name, run.group) == (f"gmp-sparsity0.9-seed{seed}", "sweep-a")
        assert run.config["seed"] == seed and run.config["sparsity"] == 0.9
        assert_history_is_the_rows(run.history, run_dir)
    rows = [deterministic_rows(out / "gmp-sparsity0.9" / f"seed{s}") for s in (0, 1)]
    assert rows[0] != rows[1]  # two seeds: the W&B runs did not share rows


@needs_wandb
@pytest.mark.slow
def test_wandb_refusing_to_start_is_one_line_and_the_same_command_continues(
        tmp_path, capsys, monkeypatch):
    import wandb

    def refuse(**_):
        raise wandb.errors.CommError("Network error (ConnectionError), entering retry loop.")

    run_dir, init = tmp_path / "run", wandb.init
    monkeypatch.setattr(wandb, "init", refuse)
    code, _, err = run_cli(capsys, ["train", *TRACKED, "--run-dir", str(run_dir)])
    assert code == 1
    [line] = err.strip().splitlines()
    assert "W&B did not start tracking" in line and "Network error" in line
    assert "WANDB_MODE=offline" in line and "--auto-resume" in line
    assert not (run_dir / "metrics.jsonl").exists()
    monkeypatch.setattr(wandb, "init", init)  # W&B starts again
    assert main(["train", *TRACKED, "--auto-resume", "--run-dir", str(run_dir)]) == 0
    [run] = offline_runs(run_dir / "wandb")
    assert run.run_id == (run_dir / "wandb_id").read_text().strip()
    assert_history_is_the_rows(run.history, run_dir)


# --- bad input: one line, exit 2, nothing written -----------------------------------------------

SMOKE = ["train", "--preset", "minigrid-smoke"]


@pytest.mark.parametrize(("args", "needles"), [
    ([*SMOKE, "--track", "--wandb.projekt", "p"], ["--wandb.projekt"]),
    ([*SMOKE, "--wandb.project", "a/b"], ["--wandb.project 'a/b'", "refuses"]),
    ([*SMOKE, "--wandb.project", ""], ["--wandb.project is empty"]),
    ([*SMOKE, "--track", "--wandb.tags", "ok", "x" * 65], ["--wandb.tags", "1 to 64"]),
    ([*SMOKE, "--wandb.group", "g"], ["--wandb.group without tracking", "--track"]),
    ([*SMOKE, "--wandb.tags", "t", "--wandb.entity", "e"],
     ["--wandb.entity, --wandb.tags without tracking"]),
    ([*SMOKE, "--track", "--wandb.track", "maybe"], ["maybe"]),
])
def test_bad_wandb_input_is_one_line_exit_2_and_creates_nothing(capsys, tmp_path, args,
                                                               needles):
    run_dir = tmp_path / "run"
    assert_usage_error(capsys, [*args, "--run-dir", str(run_dir)], *needles)
    assert not run_dir.exists()


@pytest.mark.parametrize("command", [
    [*SMOKE, "--track"],
    [*SMOKE, "--wandb.project", "p"],
    ["sweep", "--preset", "minigrid-smoke", "--method", "dense", "--seeds", "1", "--track"],
])
def test_tracking_without_wandb_installed_names_the_extra(capsys, tmp_path, monkeypatch,
                                                          command):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without it imports
    target = tmp_path / "target"
    flag = "--out" if command[0] == "sweep" else "--run-dir"
    assert_usage_error(capsys, [*command, flag, str(target)], "needs the wandb package",
                       "pip install 'mtrl-sparse[wandb]'")
    assert not target.exists()


def write_untracked_run(run_dir: Path) -> str:
    """A run directory holding minigrid-smoke's config (untracked) and nothing else; its text."""
    run_dir.mkdir()
    config = {**dataclasses.asdict(PRESETS["minigrid-smoke"].config), "run_dir": str(run_dir)}
    text = json.dumps({"agent": "ppo", "config": config, "preset": "minigrid-smoke",
                       "run_id": "0" * 32})
    (run_dir / "config.json").write_text(text)
    return text


@needs_wandb
def test_tracking_is_decided_when_a_run_starts_and_a_resume_may_not_change_it(capsys,
                                                                              tmp_path):
    run_dir = tmp_path / "run"
    text = write_untracked_run(run_dir)
    assert_usage_error(capsys, ["train", "--resume", "--run-dir", str(run_dir), "--track"],
                       "--resume continues the stored config", "wandb.track")
    assert [p.name for p in run_dir.iterdir()] == ["config.json"]
    assert (run_dir / "config.json").read_text() == text


def test_a_sweep_sets_each_runs_wandb_name_itself(capsys, tmp_path):
    out = tmp_path / "sweep"
    assert_usage_error(capsys, ["sweep", "--preset", "minigrid-smoke", "--method", "dense",
                                "--seeds", "1", "--track", "--wandb.name", "mine", "--out",
                                str(out)], "--wandb.name is set by the sweep")
    assert not out.exists()


# --- where tracking settings go and where they do not count ---------------------------------------

@needs_wandb
def test_a_tracked_sweep_passes_its_group_and_each_runs_name(tmp_path):
    out = tmp_path / "ablation"
    spec = SweepSpec(preset="minigrid-smoke", methods=("gmp",), sparsities=(0.95,), seeds=(3,),
                     train_args=("--track", "--wandb.tags", "t"))
    check_spec(spec)
    args = train_arguments(spec, SweepRun("gmp", 0.95, 3), out)
    assert args[-4:] == ["--wandb.group", "ablation", "--wandb.name", "gmp-sparsity0.95-seed3"]
    own_group = dataclasses.replace(spec, train_args=("--track", "--wandb.group", "mine"))
    args = train_arguments(own_group, SweepRun("dense", None, 0), out)
    assert args[-2:] == ["--wandb.name", "dense-seed0"] and "ablation" not in args
    untracked = dataclasses.replace(spec, train_args=())
    assert not any(a.startswith("--wandb") for a in
                   train_arguments(untracked, SweepRun("dense", None, 0), out))


def test_tracking_settings_split_no_report_group_and_no_vmapped_group():
    config = PRESETS["minigrid-smoke"].config
    tracked = dataclasses.replace(config, wandb=WandbConfig(track=True, name="seed1",
                                                            tags=("x",)))
    assert varying_fields([config, tracked]) == [{}, {}]
    check_same_program([config, tracked])  # raises if the two could not share one program


def test_a_config_written_before_tracking_reads_back_untracked(tmp_path):
    """An old run directory (its config.json without ``wandb``) resumes and evaluates as
    before: the field takes its default, tracking off."""
    run_dir = tmp_path / "old"
    stored = json.loads(write_untracked_run(run_dir))
    del stored["config"]["wandb"]
    (run_dir / "config.json").write_text(json.dumps(stored))
    read = read_config(run_dir)
    assert read.wandb == WandbConfig() and not read.wandb.enabled()
    assert dataclasses.replace(read, run_dir=None) == PRESETS["minigrid-smoke"].config


@pytest.mark.slow
def test_a_run_directory_written_before_tracking_evaluates_and_resumes(whole_run, tmp_path,
                                                                       capsys):
    run_dir = tmp_path / "old"
    shutil.copytree(whole_run, run_dir)
    stored = json.loads((run_dir / "config.json").read_text())
    del stored["config"]["wandb"]
    (run_dir / "config.json").write_text(json.dumps(stored))
    code, out, _ = run_cli(capsys, ["eval", "--run-dir", str(run_dir)])
    assert code == 0 and "checkpoint at env step 600" in out
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--total-steps", "800"]) == 0
    assert read_metrics(run_dir)[-1]["step"] == 800
    assert not (run_dir / "wandb_id").exists() and not (run_dir / "wandb").exists()


def test_train_help_lists_the_wandb_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "minigrid-smoke", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for flag in ("--wandb.track", "--wandb.project", "--wandb.entity", "--wandb.group",
                 "--wandb.tags", "--track = --wandb.track", "WANDB_MODE=offline"):
        assert flag in out, flag
