"""`mtrl-sparse report`: runs grouped by what differs, IQM and a stratified-bootstrap interval."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mtrl_sparse.presets import get_preset
from mtrl_sparse.report import aggregate, find_runs
from mtrl_sparse.run_dir import METRICS_FILE, write_config, write_finished
from support.cli import assert_usage_error, run_cli
from support.optional import needs_report

pytestmark = needs_report

TASKS = ("LavaGapS7-v0", "RedBlueDoors-6x6-v0", "MemoryS11-v0")


def fake_run(path: Path, method: str, sparsity: float, seed: int, scores: list[float],
             **changes) -> Path:
    """A run directory as training leaves it: config.json and metrics rows ending in an eval."""
    path.mkdir(parents=True)
    config = dataclasses.replace(get_preset("minigrid-smoke").config, method=method,
                                 sparsity=sparsity, seed=seed, run_dir=str(path), **changes)
    write_config(path, config, "minigrid-smoke")
    rows = [{"step": 200, "policy_loss": 0.1},
            {"step": 400, "eval/normalized_return": 0.0,
             **{f"eval/normalized_return/{t}": 0.0 for t in TASKS}},
            {"step": 600, "eval/normalized_return": float(np.mean(scores)),
             **{f"eval/normalized_return/{t}": s for t, s in zip(TASKS, scores, strict=True)}}]
    (path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_finished(path, 600, 24, rows[-1])
    return path


@pytest.fixture
def study(tmp_path):
    rng = np.random.default_rng(0)
    scores = {"dense": rng.uniform(0.5, 0.9, (5, 3)), "gmp": rng.uniform(0.2, 0.6, (5, 3))}
    for seed in range(5):
        fake_run(tmp_path / f"dense-s{seed}", "dense", 0.0, seed, list(scores["dense"][seed]))
        fake_run(tmp_path / f"gmp-s{seed}", "gmp", 0.95, seed, list(scores["gmp"][seed]))
    return tmp_path, scores


def test_groups_by_differing_fields_and_gives_the_iqm_with_an_interval(study):
    root, scores = study
    score, results = aggregate(find_runs([root]), reps=500)
    assert score == "eval/normalized_return"
    by_label = {r.label: r for r in results}
    assert set(by_label) == {"method=dense sparsity=0.0", "method=gmp sparsity=0.95"}
    for method, label in (("dense", "method=dense sparsity=0.0"),
                          ("gmp", "method=gmp sparsity=0.95")):
        result = by_label[label]
        assert (result.runs, result.tasks) == (5, 3)
        # the interquartile mean of all 15 final scores (Agarwal et al. 2021)
        assert result.iqm == pytest.approx(stats.trim_mean(scores[method], 0.25, axis=None))
        assert result.mean == pytest.approx(scores[method].mean())
        assert result.ci_low <= result.iqm <= result.ci_high
        assert result.ci_low >= scores[method].min() and result.ci_high <= scores[method].max()
    again = aggregate(find_runs([root]), reps=500)[1]
    assert again == results  # the bootstrap is seeded


def test_options_of_unused_methods_and_logging_fields_do_not_split_groups(tmp_path):
    smoke = get_preset("minigrid-smoke").config
    global_gmp = dataclasses.replace(smoke.methods, gmp=dataclasses.replace(
        smoke.methods.gmp, scope="global"))
    fake_run(tmp_path / "dense-a", "dense", 0.0, 0, [0.5, 0.6, 0.7])
    fake_run(tmp_path / "dense-b", "dense", 0.0, 1, [0.6, 0.6, 0.7], methods=global_gmp,
             plasticity=dataclasses.replace(smoke.plasticity, every_updates=0),
             log_every_env_steps=400)
    fake_run(tmp_path / "gmp-a", "gmp", 0.9, 0, [0.2, 0.3, 0.4])
    fake_run(tmp_path / "gmp-b", "gmp", 0.9, 0, [0.2, 0.3, 0.4], methods=global_gmp)
    labels = {r.label: r.runs for r in aggregate(find_runs([tmp_path]), reps=100)[1]}
    assert labels == {"method=dense sparsity=0.0": 2,
                      "method=gmp sparsity=0.9 methods.gmp.scope=layer": 1,
                      "method=gmp sparsity=0.9 methods.gmp.scope=global": 1}


def test_cli_prints_the_table_and_writes_the_report_next_to_the_runs(capsys, study):
    root, _ = study
    code, out, _ = run_cli(capsys, ["report", str(root), "--reps", "200", "--no-figures"])
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "## Final performance"
    header = next(line for line in lines if line.startswith("| group"))
    assert header.startswith("| group | runs | tasks | IQM | 95% CI | Δ IQM vs dense")
    assert "| gmp 0.95 | 5 | 3 |" in out and "| dense | 5 | 3 |" in out
    assert lines[-1] == f"report: {root / 'report.md'} (figures next to it)"
    assert "## Final performance" in (root / "report.md").read_text()


def test_bad_report_input_is_one_line_exit_2(capsys, tmp_path):
    assert_usage_error(capsys, ["report", str(tmp_path)], "is not a run directory")
    fake_run(tmp_path / "r", "dense", 0.0, 0, [0.1, 0.2, 0.3])
    (tmp_path / "r" / METRICS_FILE).write_text(json.dumps({"step": 1, "policy_loss": 0.0}) + "\n")
    assert_usage_error(capsys, ["report", str(tmp_path / "r"), "--out", str(tmp_path / "o")],
                       "no evaluation row")
    assert_usage_error(capsys, ["report", str(tmp_path / "r"), "--out", str(tmp_path / "o"),
                                "--reps", "0"], "--reps")
    assert_usage_error(capsys, ["report", str(tmp_path / "r"), str(tmp_path)], "needs --out")
    assert not (tmp_path / "o").exists()
