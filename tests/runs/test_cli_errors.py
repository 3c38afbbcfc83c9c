"""Bad command-line input: one line on stderr naming the problem, exit 2, nothing written."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mtrl_sparse.cli import main
from mtrl_sparse.presets import PRESETS
from support.cli import assert_usage_error, run_cli

SMOKE = ["train", "--preset", "mt10-smoke"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "--preset", "nope"], ["unknown preset 'nope'", "mt10-paper", "mt10-smoke"]),
        ([*SMOKE, "--method", "magic"], ["unknown method 'magic'", "dense", "static"]),
        ([*SMOKE, "--actor.method", "magic", "--method", "static", "--sparsity", "0.5"],
         ["unknown method 'magic'", "actor"]),
        ([*SMOKE, "--env.benchmark", "MT1", "--env.task", "fly-v3"],
         ["fly-v3", "reach-v3"]),
        ([*SMOKE, "--env.benchmark", "MT7"], ["MT7", "MT10"]),
        ([*SMOKE, "--env.benchmark", "MT1"], ["MT1 needs --env.task"]),
        ([*SMOKE, "--method", "static", "--sparsity", "1.0"], ["outside [0, 1)"]),
        ([*SMOKE, "--method", "static", "--sparsity", "-0.1"], ["outside [0, 1)"]),
        ([*SMOKE, "--method", "dense", "--sparsity", "0.5"], ["dense", "sparsity is 0.5"]),
        ([*SMOKE, "--method", "static"], ["needs a sparsity in (0, 1)"]),
        ([*SMOKE, "--method", "static", "--sparsity", "0.5", "--critic.method", "dense"],
         ["critic", "dense"]),
        ([*SMOKE, "--method", "gmp+static", "--sparsity", "0.5"],
         ["several sparsity methods", "gmp", "static"]),
        ([*SMOKE, "--method", "gmp+magic", "--sparsity", "0.5"], ["unknown method 'magic'"]),
        ([*SMOKE, "--method", "redo", "--sparsity", "0.5"], ["dense but sparsity is 0.5"]),
        ([*SMOKE, "--method", "gmp", "--sparsity", "0.9", "--methods.gmp.start-fraction", "0.9",
          "--methods.gmp.end-fraction", "0.5"], ["--methods.gmp", "start_fraction"]),
        ([*SMOKE, "--method", "set", "--sparsity", "0.9", "--methods.set.drop-fraction", "2"],
         ["--methods.set", "drop_fraction"]),
        ([*SMOKE, "--method", "rigl", "--sparsity", "0.9",
          "--methods.rigl.drop-fraction-decay", "linear"], ["linear", "cosine"]),
        ([*SMOKE, "--method", "redo", "--methods.redo.every-updates", "0"],
         ["--methods.redo", "every_updates"]),
        ([*SMOKE, "--method", "reset", "--methods.reset.max-resets", "-1"],
         ["--methods.reset", "max_resets"]),
        ([*SMOKE, "--total-steps", "0"], ["total-env-steps", "positive"]),
        (["train", "--preset", "minigrid-smoke", "--env.num-envs", "3"],
         ["rollout-env-steps 200", "not divisible", "--env.num-envs 3"]),
        (["train", "--preset", "minigrid-smoke", "--env.benchmark", "MT4"], ["MT4", "MT3"]),
        (["train", "--preset", "minigrid-smoke", "--env.task", "MiniGrid-DoorKey-6x6-v0"],
         ["--env.task MiniGrid-DoorKey-6x6-v0 is not a task of MiniGrid MT3",
          "MiniGrid-MemoryS11-v0"]),
        (["train", "--preset", "minigrid-smoke", "--schedule", "sequential",
          "--env.task", "MiniGrid-MemoryS11-v0"], ["--schedule sequential needs several tasks"]),
        (["train", "--preset", "minigrid-smoke", "--ppo.policy-batch-size", "500"],
         ["policy-batch-size 500"]),
        (["train", "--preset", "minigrid-smoke", "--method", "gmp"], ["needs a sparsity"]),
        (["train", "--preset", "minigrid-mt3", "--method", "gmp", "--sparsity", "0.95",
          "--critic.interval-scale", "1"],
         ["gmp on the critic prunes every 500", "after the 200 updates",
          "--critic.interval-scale"]),
        (["train", "--preset", "minigrid-smoke", "--schedule", "sequential",
          "--total-steps", "800"], ["--schedule sequential", "multiples of 600"]),
        (["train", "--preset", "minigrid-smoke", "--schedule", "sequential",
          "--env.backend", "farama"], ["--schedule sequential needs --env.backend jax"]),
        ([*SMOKE, "--schedule", "sequential", "--total-steps", "500"],
         ["--schedule sequential", "whole episodes", "multiples of 200"]),
        (["train", "--preset", "minigrid-smoke", "--schedule", "cyclic"], ["cyclic"]),
        (["train", "--preset", "minigrid-smoke", "--schedule", "sequential", "--replay",
          "cumulative"], ["--replay cumulative", "on-policy", "accepted: --replay current"]),
        ([*SMOKE, "--replay", "cumulative"], ["--replay cumulative is for --schedule sequential"]),
        (["train", "--preset", "minigrid-mt3", "--method", "reset",
          "--methods.reset.every-updates", "20000"],
         ["reset on the actor acts every 20000", "makes 11200", "never act",
          "--methods.reset.every-updates"]),
        (["train", "--preset", "minigrid-smoke", "--method", "sparse_tune"],
         ["sparse_tune on the actor acts at task boundaries", "--schedule sequential"]),
        (["train", "--preset", "minigrid-smoke", "--actor.interval-scale", "0"],
         ["--actor.interval-scale must be > 0"]),
        ([*SMOKE, "--total-steps", "-5"], ["total-env-steps", "positive"]),
        ([*SMOKE, "--total-steps", "many"], ["total-steps", "many"]),
        ([*SMOKE, "--sac.batch-size", "45"], ["45", "not divisible", "10 tasks"]),
        ([*SMOKE, "--log-every-env-steps", "0"], ["log-every-env-steps"]),
        ([*SMOKE, "--distribution", "gaussian"], ["gaussian", "uniform"]),
        ([*SMOKE, "--num-experts", "0"], ["--num-experts must be >= 1", "got 0"]),
        (["train", "--preset", "minigrid-smoke", "--arch", "moore", "--num-experts", "65"],
         ["--arch moore", "--num-experts <= 64"]),
        ([*SMOKE, "--arch", "moe", "--sac.hidden-sizes", "32"], ["--arch moe", "two or more"]),
        ([*SMOKE, "--arch", "big"], ["big", "moore"]),
        ([*SMOKE, "--compute", "fast"], ["fast", "dense", "sparse", "auto"]),
        ([*SMOKE, "--compute", "auto", "--compute-crossover", "1.5"],
         ["--compute-crossover must be a density in (0, 1]", "1.5"]),
        ([*SMOKE, "--no-such-flag", "1"], ["--no-such-flag"]),
        (["fly"], ["unknown command 'fly'", "train"]),
        (["methods", "magic"], ["unknown method", "static"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(capsys, tmp_path, args, needles):
    run_dir = tmp_path / "run"
    if args[0] == "train":
        args = [*args, "--run-dir", str(run_dir)]
    assert_usage_error(capsys, args, *needles)
    assert not run_dir.exists()


def test_used_run_dir_without_resume_is_refused_and_left_untouched(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    assert_usage_error(capsys, [*SMOKE, "--run-dir", str(run_dir)], "already used", "--resume")
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]
    assert (run_dir / "notes.txt").read_text() == "mine"


def test_unwritable_run_dir_is_refused(capsys, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder would have to be")
    assert_usage_error(capsys, [*SMOKE, "--run-dir", str(blocker / "run")], "not writable")
    # A read-only location: the kernel's /proc accepts no new folders, even from root.
    assert_usage_error(capsys, [*SMOKE, "--run-dir", "/proc/mtrl-sparse-test/run"],
                       "not writable")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert_usage_error(capsys, [*SMOKE, "--run-dir", str(locked / "run")],
                               "not writable")
        finally:
            locked.chmod(0o700)


def test_run_dir_that_is_a_file_is_refused(capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    assert_usage_error(capsys, [*SMOKE, "--run-dir", str(target)], "not a directory")
    assert target.read_text() == "x"


def test_resume_needs_a_run_with_a_checkpoint(capsys, tmp_path):
    assert_usage_error(capsys, ["train", "--resume"], "--resume needs --run-dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(capsys, ["train", "--resume", "--run-dir", str(empty)], "holds no run")
    assert list(empty.iterdir()) == []


def test_eval_of_a_missing_run_is_a_usage_error(capsys, tmp_path):
    assert_usage_error(capsys, ["eval", "--run-dir", str(tmp_path / "none")], "holds no run")


def test_eval_of_a_ppo_run_without_checkpoint_is_a_usage_error(capsys, tmp_path):
    run_dir = tmp_path / "ppo"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"agent": "ppo", "config": {}, "preset": null}')
    assert_usage_error(capsys, ["eval", "--run-dir", str(run_dir)], "no checkpoint")


def test_presets_and_methods_list_one_line_each(capsys):
    code, out, _ = run_cli(capsys, ["presets"])
    assert code == 0
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert names == list(PRESETS)
    assert {"mt10-paper", "mt10-quick", "mt10-smoke", "minigrid-mt3", "minigrid-mt5",
            "minigrid-mt7"} <= set(names)
    code, out, _ = run_cli(capsys, ["methods"])
    assert code == 0
    assert [line.split()[0] for line in out.strip().splitlines()][:2] == ["dense", "static"]
    code, out, _ = run_cli(capsys, ["methods", "static"])
    assert code == 0 and "--sparsity" in out and "--distribution" in out


def test_methods_known_to_differ_from_their_papers_are_labelled_experimental(capsys):
    """Until APP, sparse tuning and IBM follow their authors' code, the listing labels them and
    each method's page says what differs; the faithful ones carry no label."""
    code, out, _ = run_cli(capsys, ["methods"])
    labelled = {line.split()[0] for line in out.strip().splitlines() if "[experimental]" in line}
    assert code == 0 and labelled == {"app", "sparse_tune", "ibm"}
    for name in sorted(labelled):
        code, out, _ = run_cli(capsys, ["methods", name])
        assert code == 0 and out.count("experimental: ") == 1, name
    code, out, _ = run_cli(capsys, ["methods", "gmp"])
    assert code == 0 and "experimental" not in out


def test_help_documents_units(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--total-steps" in out and "env steps" in out


def test_python_api_is_importable_as_one_call():
    import mtrl_sparse

    assert callable(mtrl_sparse.train)
    assert Path(mtrl_sparse.__file__).parent.name == "mtrl_sparse"


def test_report_without_rliable_names_the_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rliable", None)  # import rliable raises ImportError
    assert_usage_error(capsys, ["report", str(tmp_path)], "rliable", "mtrl-sparse[report]")


def test_version_names_the_package_jax_and_whether_the_kernels_are_built(capsys):
    import importlib.util
    from importlib.metadata import version

    from mtrl_sparse.agents.sparse_linear import EXTENSION

    assert main(["--version"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"mtrl-sparse {version('mtrl-sparse')} (jax {version('jax')}")
    built = importlib.util.find_spec(EXTENSION) is not None
    assert line.endswith("kernels: built)" if built else "kernels: not built)")
