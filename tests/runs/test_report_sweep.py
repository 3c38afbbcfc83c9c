"""`write_report`: a sweep's report.md (IQM, difference to dense, missing runs) and its figures.

The runs are written by hand: config.json from a real preset, metrics rows with known scores and
finished.json for the finished ones. Groups with the same score on every run and task have a
bootstrap interval that collapses to that score, so IQMs and differences are known exactly.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mtrl_sparse.presets import get_preset
from mtrl_sparse.report import (
    ReportError,
    difference_to_dense,
    find_runs,
    iqm,
    percentile_interval,
    resampled_iqms,
    stratified_indices,
    stratified_interval,
    write_report,
)
from mtrl_sparse.run_dir import METRICS_FILE, write_config, write_finished
from support.optional import needs_report

pytestmark = needs_report

PRESET = "minigrid-smoke"
TASKS = ("LavaGapS7-v0", "RedBlueDoors-6x6-v0", "MemoryS11-v0")
BUDGET = 600  # the preset's total_env_steps
REPS = 200
FIGURES = ("learning_curves", "final_vs_sparsity", "plasticity_gmp", "plasticity_gmp+redo",
           "final_per_task")

REDO_SCORES = [[0.1, 0.5, 0.9], [0.2, 0.5, 0.8], [0.0, 0.6, 1.0]]
"""gmp+redo's final scores (runs, tasks): sorted 0.0 0.1 | 0.2 0.5 0.5 0.6 0.8 | 0.9 1.0, the IQM
cuts 9 // 4 = 2 from each end: (0.2 + 0.5 + 0.5 + 0.6 + 0.8) / 5 = 0.52."""


def eval_row(step: int, scores: list[float]) -> dict:
    return {"step": step, "eval/normalized_return": float(np.mean(scores)),
            **{f"eval/normalized_return/{t}": s for t, s in zip(TASKS, scores, strict=True)}}


def plasticity_row(step: int, level: float) -> dict:
    grow = step / BUDGET
    return {"step": step, "plasticity/actor/dormant_fraction": 0.1 + level * grow,
            "plasticity/actor/srank": 40.0 - 20.0 * level * grow,
            "plasticity/actor/fisher_trace": 5.0 + 3.0 * level * grow,
            "plasticity/critic/dormant_fraction": 0.05 + level * grow / 2,
            "plasticity/critic/srank": 30.0 - 10.0 * level * grow,
            "plasticity/actor/weight_norm": 12.0,  # not drawn
            "plasticity/actor/sparsity/Dense_0": level}


def sweep_run(path: Path, method: str, sparsity: float, seed: int, final: list[float],
              finished: bool = True, plasticity: bool = True) -> Path:
    """A run directory as training leaves it: evaluations at 200, 400, 600 env steps ending in
    ``final`` (earlier ones off by a seed-dependent amount), plasticity rows, finished.json; an
    unfinished run stops at 400 without finished.json."""
    path.mkdir(parents=True)
    config = dataclasses.replace(get_preset(PRESET).config, method=method, sparsity=sparsity,
                                 seed=seed, run_dir=str(path))
    write_config(path, config, PRESET)
    rows = []
    for step in (200, 400, 600) if finished else (200, 400):
        frac = step / BUDGET
        scores = [s if step == BUDGET else float(np.clip(s * frac + 0.05 * (seed - 1), 0, 1))
                  for s in final]
        rows += [{"step": step, "policy_loss": 0.1}, eval_row(step, scores)]
        if plasticity:
            rows.append(plasticity_row(step, sparsity + 0.02 * seed))
    (path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        write_finished(path, BUDGET, 24, rows[-2] if plasticity else rows[-1])
    return path


def table_row(markdown: str, group: str) -> list[str]:
    """The cells of the final-performance row of ``group``."""
    return section_row(markdown, "## Final performance", "## Per task", group)


def section_row(markdown: str, start: str, end: str, group: str) -> list[str]:
    """The cells of ``group``'s row in the table between the headings ``start`` and ``end``."""
    section = markdown[markdown.index(start):markdown.index(end)]
    (line,) = [ln for ln in section.splitlines() if ln.startswith(f"| {group} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """dense 0.8, gmp 0.9 at 0.5 (plus an unfinished seed 3 at 0.0), gmp 0.95 at 0.8 with two
    seeds, gmp+redo 0.9 at ``REDO_SCORES``; nested as a sweep directory is."""
    root = tmp_path_factory.mktemp("sweep") / "sweeps" / "s1"
    for seed in range(3):
        sweep_run(root / "dense" / f"seed{seed}", "dense", 0.0, seed, [0.8] * 3)
        sweep_run(root / "gmp-sparsity0.9" / f"seed{seed}", "gmp", 0.9, seed, [0.5] * 3)
        sweep_run(root / "gmp+redo-sparsity0.9" / f"seed{seed}", "gmp+redo", 0.9, seed,
                  REDO_SCORES[seed])
    for seed in range(2):
        sweep_run(root / "gmp-sparsity0.95" / f"seed{seed}", "gmp", 0.95, seed, [0.8] * 3)
    sweep_run(root / "gmp-sparsity0.9" / "seed3", "gmp", 0.9, 3, [0.0] * 3, finished=False)
    return root


@pytest.fixture(scope="module")
def report(sweep) -> tuple[Path, str]:
    out = sweep.parent / "report"
    return out, write_report([sweep], out, reps=REPS)


def test_iqm_is_the_quarter_trimmed_mean():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4, 5, 9, 12, 50):
        samples = rng.uniform(size=(7, n))
        np.testing.assert_allclose(iqm(samples), stats.trim_mean(samples, 0.25, axis=1))


def test_the_vectorised_stratified_bootstrap_matches_rliables():
    matrix = np.random.default_rng(1).uniform(size=(5, 3))
    ours = percentile_interval(
        resampled_iqms(matrix, stratified_indices(5, 3, 4000, np.random.default_rng(2))), 0.95)
    assert ours == pytest.approx(stratified_interval(matrix, 4000, 0.95, 0), abs=0.02)


def test_difference_interval_is_seeded_and_holds_the_difference():
    rng = np.random.default_rng(3)
    group, dense = rng.uniform(0.2, 0.6, (4, 3)), rng.uniform(0.5, 0.9, (6, 3))
    difference = difference_to_dense(group, dense, REPS, 0.95, seed=5)
    assert difference == difference_to_dense(group, dense, REPS, 0.95, seed=5)
    assert difference.value == pytest.approx(stats.trim_mean(group, 0.25, axis=None)
                                             - stats.trim_mean(dense, 0.25, axis=None))
    assert difference.low <= difference.value <= difference.high
    assert difference.low >= group.min() - dense.max()
    assert difference.high <= group.max() - dense.min()


def test_find_runs_searches_a_sweep_at_any_depth(sweep):
    runs = find_runs([sweep.parent.parent, sweep / "dense"])  # the dense runs listed once
    assert len(runs) == 3 + 4 + 3 + 2
    assert sweep / "gmp-sparsity0.9" / "seed3" in runs
    assert all(r.parent.parent == sweep for r in runs)


def test_known_iqm_and_difference_to_dense(report):
    _, markdown = report
    assert table_row(markdown, "dense") == ["dense", "3", "3", "0.800", "[0.800, 0.800]",
                                            "reference", "", "0.800"]
    # constant scores: the interval collapses to the difference, which excludes 0
    assert table_row(markdown, "gmp 0.9") == ["gmp 0.9", "3", "3", "0.500", "[0.500, 0.500]",
                                              "-0.300 *", "[-0.300, -0.300]", "0.500"]
    # two runs: too few for an interval, and no significance mark
    assert table_row(markdown, "gmp 0.95")[3:7] == ["0.800", "n/a (< 3 runs)", "+0.000",
                                                    "n/a (< 3 runs)"]
    redo = table_row(markdown, "gmp+redo 0.9")
    assert redo[:4] == ["gmp+redo 0.9", "3", "3", "0.520"]
    assert redo[4] != "[0.520, 0.520]" and redo[5].startswith("-0.280")
    low, high = (float(x) for x in redo[6].strip("[]").split(","))
    assert low <= -0.28 <= high
    assert "Agarwal et al. 2021" in markdown
    rows = [ln.split("|")[1].strip() for ln in markdown.splitlines() if ln.startswith("| ")]
    assert rows[:5] == ["group", "dense", "gmp 0.9", "gmp 0.95", "gmp+redo 0.9"]


def test_groups_of_one_run_get_no_interval_and_no_significance_mark(tmp_path):
    """The Quick start's pair (one dense run, one GMP run): the bootstrap cannot resample one run,
    so the table says so instead of a collapsed interval and a `*`."""
    sweep_run(tmp_path / "qs", "dense", 0.0, 0, [0.8] * 3)
    sweep_run(tmp_path / "qs-gmp", "gmp", 0.95, 0, [0.4] * 3)
    markdown = write_report([tmp_path / "qs", tmp_path / "qs-gmp"], tmp_path / "report",
                            reps=REPS, figures=False)
    assert table_row(markdown, "dense")[3:6] == ["0.800", "n/a (< 3 runs)", "reference"]
    assert table_row(markdown, "gmp 0.95")[3:7] == ["0.400", "n/a (< 3 runs)", "-0.400",
                                                    "n/a (< 3 runs)"]
    assert "fewer than 3 finished runs" in markdown


def test_per_task_means_spreads_and_failed_runs(report, tmp_path):
    _, markdown = report
    # tasks in the order of the score matrix (sorted by name)
    assert "| group | runs | LavaGapS7-v0 | MemoryS11-v0 | RedBlueDoors-6x6-v0 | failed runs |" \
        in markdown
    # REDO_SCORES per task: Lava (0.1, 0.2, 0.0), RedBlue (0.5, 0.5, 0.6), Memory (0.9, 0.8, 1.0)
    assert section_row(markdown, "## Per task", "## Figures", "gmp+redo 0.9") == [
        "gmp+redo 0.9", "3", "0.10 ± 0.10", "0.90 ± 0.10", "0.53 ± 0.06", "0"]
    assert section_row(markdown, "## Per task", "## Figures", "dense") == [
        "dense", "3", *["0.80 ± 0.00"] * 3, "0"]
    # a run below 0.05 on average failed, one at 0.05 did not; one run has no spread
    for seed, scores in enumerate(([0.0, 0.1, 0.0], [0.05, 0.05, 0.05], [0.9, 0.6, 0.3])):
        sweep_run(tmp_path / "runs" / f"dense-{seed}", "dense", 0.0, seed, scores,
                  plasticity=False)
    sweep_run(tmp_path / "runs" / "gmp", "gmp", 0.9, 0, [0.2, 0.4, 0.6], plasticity=False)
    markdown = write_report([tmp_path / "runs"], tmp_path / "out", reps=REPS, figures=False)
    assert section_row(markdown, "## Per task", "## Figures", "dense") == [
        "dense", "3", "0.32 ± 0.51", "0.12 ± 0.16", "0.25 ± 0.30", "1"]
    assert section_row(markdown, "## Per task", "## Figures", "gmp 0.9") == [
        "gmp 0.9", "1", "0.20 ± 0.00", "0.60 ± 0.00", "0.40 ± 0.00", "0"]


def test_unfinished_runs_are_listed_as_missing_and_excluded(report, sweep):
    out, markdown = report
    assert (out / "report.md").read_text() == markdown
    # the unfinished seed 3 scored 0.0: counted, gmp 0.9 would have 4 runs and a lower IQM
    assert table_row(markdown, "gmp 0.9")[1:4] == ["3", "3", "0.500"]
    missing = markdown[markdown.index("## Missing"):]
    run = sweep / "gmp-sparsity0.9" / "seed3"
    assert f"| `{run}` | gmp 0.9 | 3 | 400 | 600 (67% done) |" in missing
    assert "| gmp 0.95 | 2 | 3 | 2 |" in missing  # 2 of 3 seeds, seed 2 missing
    assert "12 runs in" in markdown and "4 groups: 11 finished, 1 unfinished" in markdown


def test_every_figure_is_written_as_png_and_svg(report):
    out, markdown = report
    for stem in FIGURES:
        png, svg = out / f"{stem}.png", out / f"{stem}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert png.stat().st_size > 10_000, stem
        assert "<svg" in svg.read_text()[:2000], stem
        assert f"]({stem}.png)" in markdown
    # the hand-built runs log no masks' statistics (tests/runs/test_masks.py draws those): the
    # only figure skipped is the masks', and the report says why
    assert markdown.count("Skipped") == 1, markdown
    assert "Skipped: no finished run logs its masks' statistics" in markdown


def test_a_sweep_without_dense_omits_the_difference_and_says_why(tmp_path):
    for seed in range(2):
        sweep_run(tmp_path / "runs" / f"gmp-{seed}", "gmp", 0.9, seed, [0.4, 0.5, 0.6],
                  plasticity=False)
    markdown = write_report([tmp_path / "runs"], tmp_path / "out", reps=REPS)
    assert "| group | runs | tasks | IQM | 95% CI | mean |" in markdown
    assert "The difference to dense is omitted: no finished group is dense" in markdown
    assert table_row(markdown, "gmp 0.9")[:4] == ["gmp 0.9", "2", "3", "0.500"]
    assert "### Plasticity over training\n\nSkipped: the finished runs log no plasticity" \
        in markdown
    for stem in ("learning_curves", "final_vs_sparsity", "final_per_task"):
        assert (tmp_path / "out" / f"{stem}.png").stat().st_size > 0
        assert (tmp_path / "out" / f"{stem}.svg").stat().st_size > 0


def test_a_sweep_with_no_finished_run_reports_what_is_missing(tmp_path):
    sweep_run(tmp_path / "runs" / "a", "dense", 0.0, 0, [0.5] * 3, finished=False)
    sweep_run(tmp_path / "runs" / "b", "gmp", 0.9, 0, [0.5] * 3, finished=False)
    markdown = write_report([tmp_path / "runs"], tmp_path / "out", reps=REPS)
    assert "No run has finished" in markdown
    assert "Skipped: no run has finished." in markdown
    assert markdown.count("| 400 | 600 (67% done) |") == 2
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "report.md"]


def test_without_matplotlib_figures_fail_naming_the_extra_and_the_rest_works(
        tmp_path, monkeypatch):
    sweep_run(tmp_path / "runs" / "a", "dense", 0.0, 0, [0.5] * 3)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "matplotlib"
                        else find_spec(name, *args))
    with pytest.raises(ReportError, match=r"mtrl-sparse\[report\]"):
        write_report([tmp_path / "runs"], tmp_path / "out", reps=REPS)
    markdown = write_report([tmp_path / "runs"], tmp_path / "out", reps=REPS, figures=False)
    assert "Skipped: not drawn" in markdown
    assert "1 run in" in markdown and "every finished group is dense" in markdown
    assert table_row(markdown, "dense") == ["dense", "1", "3", "0.500", "n/a (< 3 runs)",
                                            "0.500"]
    assert write_report([tmp_path / "runs"], tmp_path / "out", reps=REPS,
                        figures=False) == markdown


def test_runs_a_sweep_planned_but_not_started_are_missing(tmp_path):
    out = tmp_path / "sweep"
    sweep_run(out / "gmp-sparsity0.9" / "seed0", "gmp", 0.9, 0, [0.5] * 3)
    planned = [{"name": f"gmp-sparsity0.9/seed{seed}", "method": "gmp", "sparsity": 0.9,
                "seed": seed} for seed in range(2)]
    (out / "sweep.json").write_text(json.dumps({"version": 1, "spec": {}, "runs": planned}))
    markdown = write_report([out], tmp_path / "report", reps=REPS, figures=False)
    missing = markdown[markdown.index("## Missing"):]
    assert "### Runs not started" in missing
    assert f"| `{out / 'gmp-sparsity0.9' / 'seed1'}` | gmp | 0.9 | 1 |" in missing
    assert "seed0`" not in missing
