"""``scripts/gpu_check.sh``: the GPU check, dry-run on the CPU so that it cannot rot between GPU
runs; its time bounds (a step that outlives its bound is stopped, the next one runs, the summary
is still written); its bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHELL = ROOT / "scripts" / "gpu_check.sh"
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up
_spec.loader.exec_module(gpu_check)


def run_shell(*args: str) -> subprocess.CompletedProcess:
    # the test's environment (its compilation cache and flags), the suite's interpreter
    return subprocess.run([str(SHELL), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})


@pytest.mark.slow
def test_the_dry_run_measures_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    result = run_shell("--dry-run", "--out", str(out), "--budget", "2400")
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert list(steps) == [step.name for step in gpu_check.STEPS]
    failed = {name: step.get("why") for name, step in steps.items() if step["status"] != "ok"}
    assert result.returncode == 0 and not failed, (failed, result.stdout[-2000:])
    figures = {name: step["figures"] for name, step in steps.items()}
    assert summary["dry_run"] is True
    assert figures["device"]["platform"] == "cpu"
    assert figures["device"]["matmul_precision"] == "highest"
    quick = figures["quickstart"]
    assert 0 <= quick["final_normalized_return"] <= 1 and quick["env_steps"] > 0
    assert quick["device"]["matmul_precision"] == "highest"  # what config.json recorded
    sac = figures["sac_update"]
    assert min(sac["updates_per_s"].values()) > 0
    # a CPU computes float32 products in float32 under either precision: no drift at all
    assert sac["precision"]["drift_after_1"] == 0 and sac["precision"]["drift_after_3"] == 0
    for flags in ("default_flags", "deterministic_ops"):  # the CPU is deterministic
        assert figures["determinism"][flags]["ppo"] is True
        assert figures["determinism"][flags]["sac"] is True
    assert all(row["runs_per_hour"] > 0 for row in figures["minigrid_vmapped"]["K"].values())
    sweep = figures["sweep"]
    assert sweep["runs_finished"] == 4 and sweep["groups"] == 2
    assert set(sweep["run_platforms"].values()) == {"cpu"}
    assert figures["tests"]["passed"] > 0 and figures["tests"]["failing"] == []
    table = (out / "summary.md").read_text()
    assert all(f"| {step.name} | ok |" in table for step in gpu_check.STEPS)


def test_a_step_past_its_bound_is_stopped_and_the_check_goes_on(tmp_path, monkeypatch):
    def sleeper(check, timeout):
        code, _ = check.command("sleeper", ["sleep", "60"], timeout)
        if code != 0:
            raise gpu_check.StepFailed(code)
        return {}

    def quick(check, timeout):
        return {"answer": 42}

    monkeypatch.setattr(gpu_check, "STEPS", [
        gpu_check.Step("sleeper", 2, 2, sleeper, "sleeps past its bound"),
        gpu_check.Step("quick", 5, 10, quick, "returns at once"),
        gpu_check.Step("late", 100, 100, quick, "starts after the budget"),
    ])
    start = time.monotonic()
    code = gpu_check.run_check(tmp_path, dry_run=True, budget=10, install=None)
    assert time.monotonic() - start < 9
    assert code == 1
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert steps["sleeper"]["status"] == "timeout" and steps["sleeper"]["seconds"] < 5
    assert steps["quick"] == {**steps["quick"], "status": "ok", "figures": {"answer": 42}}
    assert steps["late"]["status"] in ("ok", "skipped")  # what is left of 10 s, at least 5


def test_the_budget_spent_skips_the_remaining_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "STEPS", [
        gpu_check.Step("first", 1, 1, lambda check, timeout: time.sleep(1.2) or {}, "1.2 s"),
        gpu_check.Step("second", 5, 5, lambda check, timeout: {}, "never starts"),
    ])
    assert gpu_check.run_check(tmp_path, dry_run=True, budget=6, install=None) == 1
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert steps["first"]["status"] == "ok"
    assert steps["second"]["status"] == "skipped"
    assert "budget" in steps["second"]["why"]


@pytest.mark.parametrize("args, message", [
    (["--fast"], "unknown option --fast"),
    (["--budget", "30"], "--budget 30"),
    (["--wheelhouse", "/nonexistent/wheels"], "is not a folder"),
    (["--out", "EXISTING"], "holds an earlier check"),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, args, message):
    existing = tmp_path / "earlier"
    existing.mkdir()
    (existing / "summary.json").write_text("{}")
    args = [str(existing) if arg == "EXISTING" else arg for arg in args]
    result = run_shell(*args, "--dry-run") if "--out" in args else run_shell(
        *args, "--out", str(tmp_path / "new"), "--dry-run")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "new").exists()
    assert [p.name for p in existing.iterdir()] == ["summary.json"]
    assert (existing / "summary.json").read_text() == "{}"
