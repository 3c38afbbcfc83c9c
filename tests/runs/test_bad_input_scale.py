"""Bad input beyond ``train``'s flags (``test_cli_errors.py``): ``eval``, ``report`` and ``sweep``
flags, sweep TOML files, hand-edited ``config.json`` files and run directories of another
version. Each is one line on stderr, exit 2, and nothing created or changed; a property-based
test throws arbitrary values at the numeric flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.cli import assert_usage_error
from support.optional import needs_report

CONFIGS = {
    "not-json": "{not json",
    "a-list": "[1, 2]",
    "no-config": '{"agent": "ppo"}',
    "unknown-field": '{"agent": "ppo", "config": {"no_such_field": 1}, "preset": null}',
    "unknown-nested-field": '{"agent": "ppo", "config": {"env": {"colour": "red"}}}',
    "wrong-type": '{"agent": "ppo", "config": {"seed": "abc"}, "preset": null}',
    "bool-for-int": '{"agent": "sac", "config": {"total_env_steps": true}}',
    "other-agent": '{"agent": "dqn", "config": {}, "preset": null}',
}
CONFIG_NEEDLES = {
    "not-json": "does not read as JSON", "a-list": "holds no run config",
    "no-config": "holds no run config", "unknown-field": "no_such_field",
    "unknown-nested-field": "env.colour", "wrong-type": "field seed is 'abc', expected int",
    "bool-for-int": "field total_env_steps is True", "other-agent": "agent 'dqn'",
}


def run_dir_with(tmp_path: Path, text: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    return run


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("case", list(CONFIGS))
@pytest.mark.parametrize("command", ["train-resume", "train-auto-resume", "eval",
                                     pytest.param("report", marks=needs_report)])
def test_a_hand_edited_or_foreign_config_is_one_line_exit_2_and_left_alone(
        capsys, tmp_path, case, command):
    run = run_dir_with(tmp_path, CONFIGS[case])
    args = {"train-resume": ["train", "--resume", "--run-dir", str(run)],
            "train-auto-resume": ["train", "--auto-resume", "--run-dir", str(run)],
            "eval": ["eval", "--run-dir", str(run)],
            "report": ["report", str(run), "--out", str(tmp_path / "report")]}[command]
    before = snapshot(tmp_path)
    assert_usage_error(capsys, args, CONFIG_NEEDLES[case])
    assert snapshot(tmp_path) == before


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


SWEEP = ["sweep", "--preset", "minigrid-smoke", "--method", "dense", "--seeds", "1"]


@pytest.mark.parametrize(("args", "needle"), [
    (["--file", "{bad.toml}"], "not valid TOML"),
    (["--file", "{unknown.toml}"], "unknown keys frobnicate"),
    (["--file", "{types.toml}"], "must be lists of strings"),
    (["--file", "{missing.toml}"], "cannot read it"),
    ([*SWEEP[1:], "--seeds", "0"], "at least one seed"),
    ([*SWEEP[1:], "--sparsity", "2"], "in (0, 1)"),
    ([*SWEEP[1:], "--group-size", "0"], "positive integer"),
    ([*SWEEP[1:], "--backend", "slurm"], "accepted: local, ray"),
    ([*SWEEP[1:], "--workers", "-1"], "positive integer"),
    (["--preset", "nope", "--method", "dense", "--seeds", "1"], "nope"),
    (["--preset", "minigrid-smoke", "--method", "magic", "--seeds", "1"], "magic"),
    (["--preset", "minigrid-smoke", "--method", "gmp", "--seeds", "1"], "sparsity"),
])
def test_bad_sweep_input_is_one_line_exit_2_and_creates_nothing(capsys, tmp_path, args, needle):
    files = {
        "{bad.toml}": write(tmp_path, "bad.toml", 'preset = "minigrid-smoke"\nmethods = [\n'),
        "{unknown.toml}": write(tmp_path, "unknown.toml", 'preset = "minigrid-smoke"\nmethods '
                                '= ["dense"]\nseeds = 1\nfrobnicate = 2\n'),
        "{types.toml}": write(tmp_path, "types.toml", 'preset = "minigrid-smoke"\nmethods = '
                              '"dense"\nseeds = 1\n'),
        "{missing.toml}": str(tmp_path / "missing.toml"),
    }
    out = tmp_path / "out"
    args = [files.get(a, a) for a in args]
    before = snapshot(tmp_path)
    assert_usage_error(capsys, ["sweep", *args, "--out", str(out)], needle)
    assert not out.exists() and snapshot(tmp_path) == before


def test_a_sweep_into_a_run_directory_or_without_out_is_refused(capsys, tmp_path):
    run = run_dir_with(tmp_path, CONFIGS["wrong-type"])
    before = snapshot(tmp_path)
    assert_usage_error(capsys, [*SWEEP, "--out", str(run)], "holds no sweep")
    assert_usage_error(capsys, SWEEP, "needs --out")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("args", "needle"), [
    (["eval"], "--run-dir"),
    (["eval", "--run-dir", "{run}", "--step", "x"], "--step"),
    (["eval", "--run-dir", "{nowhere}"], "holds no run"),
    (["report"], "needs --out"),
    pytest.param(["report", "{nowhere}"], "is not a run directory", marks=needs_report),
    (["report", "{run}", "--out"], "--out"),
    (["report", "{run}", "--bogus"], "--bogus"),
    (["train", "--auto-resume"], "--auto-resume needs --run-dir"),
    (["train", "--resume", "--auto-resume", "--run-dir", "{run}"], "not both"),
])
def test_bad_eval_report_and_resume_flags_are_one_line_exit_2(capsys, tmp_path, args, needle):
    run = run_dir_with(tmp_path, json.dumps({"agent": "ppo", "config": {}, "preset": None}))
    names = {"{run}": str(run), "{nowhere}": str(tmp_path / "nowhere")}
    before = snapshot(tmp_path)
    assert_usage_error(capsys, [names.get(a, a) for a in args], needle)
    assert snapshot(tmp_path) == before


NUMERIC_FLAGS = ["--total-steps", "--seed", "--eval-every-env-steps", "--log-every-env-steps",
                 "--checkpoint-every-env-steps", "--sparsity", "--env.num-envs"]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # capsys read each time
@given(flag=st.sampled_from(NUMERIC_FLAGS),
       value=st.one_of(st.integers(max_value=0).map(str), st.floats(allow_nan=True).map(str),
                       st.text(alphabet="abcxyz-_.,:", min_size=1, max_size=6)))
def test_any_bad_numeric_flag_value_is_one_line_exit_2(capsys, tmp_path_factory, flag, value):
    """Non-positive, fractional, NaN or non-numeric values of flags that need positive integers
    (or a sparsity in [0, 1) with a method that takes one) never train and never traceback."""
    run = tmp_path_factory.mktemp("prop") / "run"
    args = ["train", "--preset", "minigrid-smoke", "--run-dir", str(run)]
    if flag == "--sparsity":
        args += ["--method", "static"]
        try:
            if 0 < float(value) < 1:
                return  # a valid sparsity
        except ValueError:
            pass
    elif flag == "--seed":
        try:
            if int(value) == 0:
                return  # seed 0 is valid
        except ValueError:
            pass
    assert_usage_error(capsys, [*args, flag, value])
    assert not run.exists()
