"""Aggregate finished runs into a table: IQM of the final score with a stratified-bootstrap CI.

Following Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice" (NeurIPS), as
the reference paper does: each run contributes its final evaluation score on every task (a
``(runs, tasks)`` matrix per group), the interquartile mean is taken over all those scores, and
its confidence interval comes from ``rliable``'s stratified bootstrap (runs resampled within each
task). The score is the normalised return where runs log one (MiniGrid PPO), else the success
rate (Meta-World SAC).

Runs are grouped by the config fields in which they differ, seeds aside: runs of one method and
sparsity but different seeds form one group, labelled by those differing fields.

``write_report`` reports a whole sweep (run directories at any depth below the paths given):
``report.md`` with the table, each group's difference to the dense group with its interval, the
runs still missing, and figures (``mtrl_sparse.report_figures``, matplotlib from the ``report``
extra): learning curves, final score against sparsity, plasticity over training and a per-task
heat map. Only finished runs (``finished.json``) enter its numbers. Sequential-schedule groups
also get Continual World's metrics (``sequential_metrics``): average performance, forgetting,
and the forward transfer against the single-task reference runs found among the paths
(``split_references``; a sweep of a sequential preset trains them), with the average performance
after each task as a figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtrl_sparse.config import RunConfig, differing_fields, flat_fields
from mtrl_sparse.report_figures import (
    Curve,
    FigureNote,
    FinalPoint,
    file_stem,
    final_vs_sparsity_figure,
    frozen_share_figure,
    heatmap_figure,
    learning_curves_figure,
    phase_average_figure,
    plasticity_figure,
    save_figure,
)
from mtrl_sparse.report_masks import MaskGroup, mask_notes, mask_rows, masks_section
from mtrl_sparse.report_series import align, step_series
from mtrl_sparse.run_dir import CONFIG_FILE, read_config, read_finished, read_metrics
from mtrl_sparse.sequential_metrics import (
    WINDOW,
    SequentialScores,
    bootstrap_mean,
    forward_transfer,
    reference_area,
    sequential_scores,
)

SCORES = ("eval/normalized_return", "eval/success")
"""Score prefixes, the first one a run logs wins: per task ``<prefix>/<task>``."""
IGNORED_FIELDS = ("seed", "run_dir", "progress", "log_every_env_steps",
                  "checkpoint_every_env_steps", "keep_checkpoints", "plasticity", "compute",
                  "compute_crossover", "wandb", "video_every_env_steps")
"""Fields (or field groups) whose values never split runs into groups: the seed, what only
decides what is logged or saved (and where: W&B tracking), and how masked layers compute (the
same numbers up to float32 summation order), never the numbers a run computes."""


class ReportError(ValueError):
    """Runs that cannot be reported (missing, unevaluated, or mixing scores); one line."""


@dataclass(frozen=True)
class GroupResult:
    """One group's aggregate: IQM and its interval over ``runs`` x ``tasks`` final scores."""

    label: str
    runs: int
    tasks: int
    iqm: float
    ci_low: float
    ci_high: float
    mean: float


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories among ``paths``: each path is a run directory (it holds ``config.json``) or
    holds runs at any depth below it, as a sweep does (``sweeps/s1/gmp-sparsity0.95/seed3/``).
    A run's own subdirectories and hidden directories are not searched; each run is listed once,
    in path order and sorted below each path."""
    runs: dict[Path, Path] = {}  # by resolved path
    for path in paths:
        found = _runs_below(path, set())
        if not found:
            raise ReportError(f"{path} is not a run directory and holds none")
        for run in found:
            runs.setdefault(run.resolve(), run)
    return list(runs.values())


def _runs_below(path: Path, visited: set[Path]) -> list[Path]:
    """Runs at or below ``path``, sorted; ``visited`` (resolved directories, updated) keeps a
    symbolic link from leading the search in a circle."""
    resolved = path.resolve()
    if resolved in visited:
        return []
    visited.add(resolved)
    if (path / CONFIG_FILE).is_file():
        return [path]
    if not path.is_dir():
        return []
    children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [run for child in children for run in _runs_below(child, visited)]


def final_scores(run_dir: Path) -> tuple[str, dict[str, float]]:
    """``(score name, {task: final score})`` from the run's last evaluation row."""
    return final_scores_of(read_metrics(run_dir), run_dir)


def final_scores_of(rows: list[dict[str, Any]], run_dir: Path) -> tuple[str, dict[str, float]]:
    """``(score name, {task: final score})`` from the last evaluation row among a run's metrics
    ``rows`` (``run_dir`` names the run in errors)."""
    rows = [r for r in rows if any(k.startswith(SCORES) for k in r)]
    if not rows:
        raise ReportError(f"{run_dir} has no evaluation row in its metrics")
    last = rows[-1]
    for prefix in SCORES:
        per_task = {k[len(prefix) + 1:]: float(v) for k, v in last.items()
                    if k.startswith(prefix + "/")}
        if per_task:
            return prefix, per_task
    raise ReportError(f"{run_dir}: its last evaluation row has no per-task score")


def varying_fields(configs: list[RunConfig]) -> list[dict[str, Any]]:
    """Per config, ``{dotted field name: value}`` of the fields that differ between ``configs``
    (seeds and logging aside; a method's options only for configs whose networks use that
    method), in the config's field order."""
    varying: list[str] = []
    for other in configs[1:]:
        for name in differing_fields(configs[0], other):
            if name not in varying and name.split(".")[0] not in IGNORED_FIELDS:
                varying.append(name)
    fields = []
    for config in configs:
        flat = flat_fields(config)
        used = {part for s in config.network_methods().values() for part in s.name.split("+")}
        fields.append({n: flat[n] for n in flat if n in varying
                       and not (n.startswith("methods.") and n.split(".")[1] not in used)})
    return fields


def label_of(fields: dict[str, Any], config: RunConfig) -> str:
    """A group's label: ``field=value`` of its varying ``fields``, or the method name when none
    vary."""
    return " ".join(f"{n}={v}" for n, v in fields.items()) if fields else config.method


def group_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's label: ``field=value`` for the config fields that differ between runs (seeds
    and logging aside; a method's options only for runs that use that method), or the method
    name when none do."""
    configs = [read_config(d) for d in run_dirs]
    return [label_of(fields, config)
            for fields, config in zip(varying_fields(configs), configs, strict=True)]


def common_score(names: list[str]) -> str:
    """The one score name the runs log (``ReportError`` if they mix several)."""
    if len(set(names)) > 1:
        raise ReportError(f"the runs log different scores ({', '.join(sorted(set(names)))}); "
                          "report runs of one agent at a time")
    return names[0]


def score_matrix(runs: list[dict[str, float]], label: str) -> tuple[tuple[str, ...], np.ndarray]:
    """``(tasks, (runs, tasks) matrix)`` of one group's ``{task: final score}`` per run, tasks
    sorted by name (``ReportError`` if the runs' task sets differ)."""
    tasks = sorted(runs[0])
    if any(sorted(r) != tasks for r in runs):
        raise ReportError(f"group {label!r} mixes runs of different task sets")
    return tuple(tasks), np.array([[r[t] for t in tasks] for r in runs])


def group_result(label: str, matrix: np.ndarray, reps: int, confidence: float,
                 seed: int) -> GroupResult:
    """IQM, stratified-bootstrap interval and mean of a group's (runs, tasks) final scores."""
    from rliable import metrics

    low, high = stratified_interval(matrix, reps, confidence, seed)
    return GroupResult(label=label, runs=matrix.shape[0], tasks=matrix.shape[1],
                       iqm=float(metrics.aggregate_iqm(matrix)), ci_low=low, ci_high=high,
                       mean=float(np.mean(matrix)))


def aggregate(run_dirs: list[Path], reps: int = 2000, confidence: float = 0.95,
              seed: int = 0) -> tuple[str, list[GroupResult]]:
    """IQM and stratified-bootstrap interval per group of ``run_dirs``; the score's name."""
    scores = [final_scores(d) for d in run_dirs]
    score = common_score([name for name, _ in scores])
    groups: dict[str, list[dict[str, float]]] = {}
    for label, (_, per_task) in zip(group_labels(run_dirs), scores, strict=True):
        groups.setdefault(label, []).append(per_task)
    return score, [group_result(label, score_matrix(runs, label)[1], reps, confidence, seed)
                   for label, runs in groups.items()]


def stratified_interval(matrix: np.ndarray, reps: int, confidence: float,
                        seed: int) -> tuple[float, float]:
    """Percentile interval of the IQM of a (runs, tasks) matrix under rliable's stratified
    bootstrap (runs resampled with replacement within each task), seeded.

    rliable's ``StratifiedBootstrap`` draws its indices from NumPy's global generator (version
    1.2), so its ``random_state`` does not make intervals reproducible; the subclass here draws
    them from the bootstrap's own seeded generator instead.
    """
    from rliable import library, metrics

    class SeededStratifiedBootstrap(library.StratifiedBootstrap):
        def update_indices(self) -> tuple[np.ndarray, ...]:
            runs = self.generator.choice(self._num_items, self._args_shape, replace=True)
            return (runs, *self._strata_indices)

    bootstrap = SeededStratifiedBootstrap(matrix, seed=np.random.default_rng(seed))
    low, high = bootstrap.conf_int(lambda m: np.array([metrics.aggregate_iqm(m)]), reps=reps,
                                   size=confidence, method="percentile")[:, 0]
    return float(low), float(high)


# --- sweep report: report.md and figures ----------------------------------------------------


@dataclass(frozen=True)
class LoadedRun:
    """One run directory of a sweep, read once: its config, metrics rows and finish mark."""

    path: Path
    config: RunConfig
    rows: tuple[dict[str, Any], ...]
    finished: dict[str, Any] | None
    """``finished.json`` (None: the run is unfinished and enters no number)."""

    def last_step(self) -> int:
        """The last env step the run logged (0 before its first row)."""
        return max((int(r["step"]) for r in self.rows), default=0)


@dataclass(frozen=True)
class SweepGroup:
    """Runs that differ only in their seed (and logging), finished and unfinished apart."""

    label: str
    """``field=value`` of the fields that vary in the sweep (``group_labels``)."""
    name: str
    """Short name: the method, other varying fields, then the sparsity (``gmp 0.95``)."""
    series: str
    """The name without the sparsity (``gmp``): a line across sparsities."""
    sparsity: float
    dense: bool
    """Every network of the group is dense: the reference of the differences."""
    finished: tuple[LoadedRun, ...]
    unfinished: tuple[LoadedRun, ...]


@dataclass(frozen=True)
class Difference:
    """IQM(group) - IQM(dense) and its percentile interval (see ``difference_to_dense``)."""

    value: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or below 0."""
        return self.low > 0.0 or self.high < 0.0


@dataclass(frozen=True)
class GroupFinal:
    """A group's final scores and their aggregate."""

    group: SweepGroup
    tasks: tuple[str, ...]
    matrix: np.ndarray
    """(runs, tasks) final scores of the finished runs."""
    result: GroupResult
    difference: Difference | None
    """To the dense group (None for it, and when there is no one dense group of these tasks)."""


REPORT_FILE = "report.md"
PLASTICITY_PREFIX = "plasticity/"
PLASTICITY_METRICS = ("dormant_fraction", "srank", "fisher_trace")
"""Plasticity metrics drawn (``plasticity/<network>/<metric>``; any network a run logs)."""
SCORE_LABELS = {"eval/normalized_return": "normalised return", "eval/success": "success rate"}
SWEEP_MANIFEST = "sweep.json"
"""The manifest ``mtrl-sparse sweep`` writes in its ``--out`` (``mtrl_sparse.sweep``)."""


def not_started(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Runs a sweep planned but has not started: ``(run dir, its sweep.json entry)`` for each
    entry of ``<path>/sweep.json`` (``mtrl_sparse.sweep``'s manifest, read as JSON: ``runs`` of
    ``{"name": <run dir relative to the sweep>, "method", "sparsity", "seed"}``) whose run
    directory holds no ``config.json`` yet. Paths without a readable manifest plan nothing."""
    planned = []
    for path in paths:
        try:
            entries = json.loads((path / SWEEP_MANIFEST).read_text())["runs"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        planned += [(path / entry["name"], entry) for entry in entries
                    if isinstance(entry, dict) and isinstance(entry.get("name"), str)
                    and not (path / entry["name"] / CONFIG_FILE).is_file()]
    return planned


def load_run(path: Path) -> LoadedRun:
    """The run directory at ``path``, read."""
    return LoadedRun(path=path, config=read_config(path), rows=tuple(read_metrics(path)),
                    finished=read_finished(path))


REFERENCE_FIELDS = ("env.task", "env.benchmark", "schedule", "total_env_steps", "replay",
                    "method", "sparsity", "distribution", "actor.", "critic.", "methods.")
"""Fields (and field groups, ending in ``.``) in which a single-task reference run may differ
from the sequential runs it serves (``mtrl_sparse.sweep.reference_flags`` sets the first five;
the method is the reference's own), besides ``IGNORED_FIELDS``."""


def is_reference_of(reference: RunConfig, sequential: RunConfig) -> bool:
    """Whether ``reference`` is a single-task reference run of a phase of the sequential run
    ``sequential``: the same agent and setup, one of its tasks alone for one phase's env steps
    under the multi-task schedule, dense."""
    tasks = reference.task_names()
    if (reference.schedule != "multitask" or len(tasks) != 1 or not is_dense(reference)
            or reference.AGENT != sequential.AGENT or tasks[0] not in sequential.task_names()
            or reference.total_env_steps != sequential.phase_env_steps()):
        return False
    return all(name.startswith(REFERENCE_FIELDS) or name.split(".")[0] in IGNORED_FIELDS
               for name in differing_fields(reference, sequential))


def split_references(runs: list[LoadedRun]) -> tuple[list[LoadedRun], list[LoadedRun]]:
    """``(runs, references)``: the single-task reference runs of the sequential runs among
    ``runs`` apart (``is_reference_of``; ``mtrl_sparse.sweep.reference_flags`` makes them); a
    reference enters only the forward transfer, no group."""
    sequential = [r.config for r in runs if r.config.schedule == "sequential"]

    def is_reference(config: RunConfig) -> bool:
        return any(is_reference_of(config, s) for s in sequential)

    flags = [is_reference(r.config) for r in runs]
    return ([r for r, f in zip(runs, flags, strict=True) if not f],
            [r for r, f in zip(runs, flags, strict=True) if f])


def is_dense(config: RunConfig) -> bool:
    """Whether every network of ``config`` trains with the method ``dense``."""
    return all(s.name == "dense" for s in config.network_methods().values())


def group_runs(runs: list[LoadedRun]) -> list[SweepGroup]:
    """``runs`` grouped by the fields that vary between them (finished or not), dense groups
    first, then by series and sparsity."""
    fields = varying_fields([r.config for r in runs])
    members: dict[str, list[tuple[LoadedRun, dict[str, Any]]]] = {}
    for run, run_fields in zip(runs, fields, strict=True):
        members.setdefault(label_of(run_fields, run.config), []).append((run, run_fields))
    groups = []
    for label, group in members.items():
        config, group_fields = group[0][0].config, group[0][1]
        dense = is_dense(config)
        others = [f"{n}={v}" for n, v in group_fields.items() if n not in ("method", "sparsity")]
        series = " ".join([config.method, *others])
        groups.append(SweepGroup(
            label=label,
            name=series if dense or not config.sparsity else f"{series} {config.sparsity:g}",
            series=series, sparsity=config.sparsity, dense=dense,
            finished=tuple(r for r, _ in group if r.finished is not None),
            unfinished=tuple(r for r, _ in group if r.finished is None)))
    return sorted(groups, key=lambda g: (not g.dense, g.series, g.sparsity, g.label))


def iqm(samples: np.ndarray) -> np.ndarray:
    """Interquartile mean over the last axis, ``(..., n) -> (...)``: the mean of the sorted
    values without the ``n // 4`` lowest and highest, as ``scipy.stats.trim_mean(x, 0.25)`` and
    rliable's ``aggregate_iqm`` of the flattened scores (Agarwal et al. 2021)."""
    n = samples.shape[-1]
    return np.sort(samples, axis=-1)[..., n // 4:n - n // 4].mean(axis=-1)


def stratified_indices(runs: int, tasks: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, runs, tasks) run indices of ``reps`` stratified bootstrap resamples: each task's
    ``runs`` scores drawn with replacement from that task's (runs resampled within each task,
    as rliable's ``StratifiedBootstrap``)."""
    return rng.integers(0, runs, size=(reps, runs, tasks))


def resampled_iqms(matrix: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(reps,) IQMs of the resamples of a (runs, tasks) ``matrix`` given by (reps, runs, tasks)
    ``indices`` (``stratified_indices``), each over all its runs x tasks scores."""
    resampled = matrix[indices, np.arange(matrix.shape[1])]  # (reps, runs, tasks)
    return iqm(resampled.reshape(len(indices), -1))


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of (reps,) bootstrap replicates."""
    low, high = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def difference_to_dense(matrix: np.ndarray, dense: np.ndarray, reps: int, confidence: float,
                        seed: int) -> Difference:
    """IQM(group) - IQM(dense) of a group's and the dense group's (runs, tasks) final scores
    (same tasks, any numbers of runs), with its interval.

    The interval is the central ``confidence`` percentile interval of ``reps`` replicates of
    IQM(group*) - IQM(dense*), where in each replication group* and dense* are stratified
    bootstrap resamples (runs resampled within each task; Agarwal et al. 2021) drawn
    independently of each other, from two generators spawned from ``seed`` (the same seed gives
    the same interval). The runs of the two groups are independent, so are their resamples.
    """
    group_rng, dense_rng = (np.random.default_rng(s)
                            for s in np.random.SeedSequence(seed).spawn(2))
    replicates = (
        resampled_iqms(matrix, stratified_indices(*matrix.shape, reps, group_rng))
        - resampled_iqms(dense, stratified_indices(*dense.shape, reps, dense_rng)))
    low, high = percentile_interval(replicates, confidence)
    return Difference(float(iqm(matrix.ravel()) - iqm(dense.ravel())), low, high)


def learning_curve(scores: np.ndarray, reps: int, confidence: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(iqm, low, high)``, each (T,), of a group's (runs, T, tasks) evaluation scores: at each
    step the IQM over the pooled runs x tasks scores, and its stratified-bootstrap percentile
    interval. The resampling indices are drawn once and used at every step (whole runs' curves
    are resampled), so the band is smooth; at the final step it is the table's kind of
    interval."""
    runs, _, tasks = scores.shape
    indices = stratified_indices(runs, tasks, reps, np.random.default_rng(seed))
    center = iqm(scores.transpose(1, 0, 2).reshape(scores.shape[1], -1))
    bounds = np.array([percentile_interval(resampled_iqms(scores[:, t], indices), confidence)
                       for t in range(scores.shape[1])]).reshape(-1, 2)
    return center, bounds[:, 0], bounds[:, 1]


def plasticity_keys(rows: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[str]:
    """The ``plasticity/<network>/<metric>`` names a run logs for the ``PLASTICITY_METRICS``,
    actor first, then by network and in the order of ``PLASTICITY_METRICS``."""
    keys = {k for r in rows for k in r if k.startswith(PLASTICITY_PREFIX)
            and len(k.split("/")) == 3 and k.split("/")[2] in PLASTICITY_METRICS}
    return sorted(keys, key=plasticity_order)


def plasticity_order(key: str) -> tuple[bool, str, int]:
    """Sort key of a ``plasticity/<network>/<metric>`` name: actor first, then by network, and
    by the metric's place in ``PLASTICITY_METRICS``."""
    _, network, metric = key.split("/")
    return network != "actor", network, PLASTICITY_METRICS.index(metric)


def require_matplotlib() -> None:
    """``ReportError`` naming the ``report`` extra unless matplotlib is installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ReportError("figures need matplotlib, which is not installed: "
                          "pip install 'mtrl-sparse[report]' (or report without figures)")


def write_report(paths: list[Path], out_dir: Path, reps: int = 2000, confidence: float = 0.95,
                 seed: int = 0, figures: bool = True) -> str:
    """Report a sweep: ``<out_dir>/report.md`` and its figures (PNG and SVG); returns the
    Markdown.

    Runs are the run directories at or below ``paths`` (``find_runs``), grouped by the config
    fields that vary between them, seeds aside (``group_labels``). Only finished runs (with
    ``finished.json``) enter numbers and figures; unfinished ones are listed under "Missing",
    with the runs a sweep's ``sweep.json`` plans but that have not started (``not_started``;
    for the paths given, which are then a sweep's ``--out``) and the groups that have fewer
    finished seeds than others. Sections:

    * final performance per group: IQM of the (runs, tasks) final scores with its
      stratified-bootstrap percentile interval (``reps`` replications, seeded by ``seed``; as
      ``aggregate``, Agarwal et al. 2021), and the difference to the dense group with its
      interval (``difference_to_dense``), marked ``*`` where the interval excludes 0 (omitted,
      with the reason, unless exactly one group is dense);
    * per task and group: the mean and standard deviation across runs of the final score, and
      the runs that failed on every task (``per_task_section``);
    * the sparse groups' masks at the end of training: density, the topology's movement, the
      trunk features each task's head reads and their overlap (``report_masks``);
    * figures (``figures=True`` needs matplotlib, the ``report`` extra): learning curves,
      final score against sparsity, plasticity over training, per-task heat map, the masks'
      density, movement and head features over training; a figure without data is skipped
      and the report says why.

    ``ReportError`` for unusable input: no runs, a finished run without evaluation, runs mixing
    scores, bad ``reps`` or ``confidence``, figures without matplotlib.
    """
    if reps <= 0 or not 0.0 < confidence < 1.0:
        raise ReportError(f"reps must be > 0 and confidence in (0, 1); got {reps} and "
                          f"{confidence}")
    if figures:
        require_matplotlib()
    runs, references = split_references([load_run(path) for path in find_runs(paths)])
    groups = group_runs(runs)
    score, finals, no_difference = final_performance(groups, reps, confidence, seed)
    sequential = [] if score is None else sequential_groups(finals, references, score)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not figures:
        notes = [FigureNote("Figures", skipped="not drawn (the report was asked for none)")]
    elif score is None:
        notes = [FigureNote("Figures", skipped="no run has finished")]
    else:
        notes = [*draw_figures(finals, sequential, score, out_dir, reps, confidence, seed),
                 *mask_notes(mask_groups(finals), out_dir)]
    markdown = "\n".join([
        *summary_section(paths, groups, references),
        *final_section(score, finals, no_difference, reps, confidence, seed),
        *per_task_section(score, finals),
        *(masks_section(mask_groups(finals)) if finals else []),
        *sequential_section(score, sequential, references, reps, confidence, seed),
        *figures_section(notes),
        *missing_section(groups, not_started(paths)),
    ]) + "\n"
    (out_dir / REPORT_FILE).write_text(markdown)
    return markdown


def mask_groups(finals: list[GroupFinal]) -> list[MaskGroup]:
    """The sparse groups' finished runs, for the Masks section and figures (``report_masks``)."""
    return [MaskGroup(name=f.group.name, sparsity=f.group.sparsity, tasks=f.tasks,
                      runs=tuple(tuple(mask_rows(run.rows)) for run in f.group.finished))
            for f in finals if not f.group.dense]


def final_performance(groups: list[SweepGroup], reps: int, confidence: float,
                      seed: int) -> tuple[str | None, list[GroupFinal], str | None]:
    """``(score name, finals, why no differences)`` of the groups' finished runs: the score is
    None when no run finished; the reason is None when the differences to dense are given."""
    scored = [(g, [final_scores_of(list(r.rows), r.path) for r in g.finished])
              for g in groups if g.finished]
    if not scored:
        return None, [], "no run has finished"
    score = common_score([name for _, scores in scored for name, _ in scores])
    matrices = [(g, *score_matrix([per_task for _, per_task in scores], g.label))
                for g, scores in scored]
    dense = [(g, tasks, matrix) for g, tasks, matrix in matrices if g.dense]
    if len(dense) == len(matrices):
        reason = "every finished group is dense, none to compare with it"
    elif not dense:
        reason = "no finished group is dense (method dense), the reference of the difference"
    elif len(dense) > 1:
        names = ", ".join(g.name for g, _, _ in dense)
        reason = f"{len(dense)} finished groups are dense ({names}); the difference needs one"
    else:
        reason = None
    finals = []
    for group, tasks, matrix in matrices:
        difference = None
        if reason is None and not group.dense and tasks == dense[0][1]:
            difference = difference_to_dense(matrix, dense[0][2], reps, confidence, seed)
        finals.append(GroupFinal(group, tasks, matrix,
                                 group_result(group.label, matrix, reps, confidence, seed),
                                 difference))
    return score, finals, reason


def group_curves(finals: list[GroupFinal], score: str, reps: int, confidence: float,
                 seed: int) -> list[Curve]:
    """Each group's learning curve (``learning_curve``) at the evaluation steps all its finished
    runs share (groups sharing none are left out)."""
    curves = []
    for final in finals:
        keys = [f"{score}/{task}" for task in final.tasks]
        steps, scores = align([step_series(r.rows, keys) for r in final.group.finished])
        if len(steps):
            curves.append(curve_of(final.group, steps,
                                   *learning_curve(scores, reps, confidence, seed)))
    return curves


def plasticity_curves(finals: list[GroupFinal]) -> list[tuple[str, Curve]]:
    """``(metric name, curve)`` of each plasticity metric every finished run of a group logs
    (``plasticity_keys``): the mean over the runs, the band from the lowest to the highest run,
    at the steps all of them logged."""
    curves = []
    for final in finals:
        runs = final.group.finished
        common = set.intersection(*(set(plasticity_keys(r.rows)) for r in runs))
        for key in (k for k in plasticity_keys(runs[0].rows) if k in common):
            steps, values = align([step_series(r.rows, [key]) for r in runs])
            if len(steps):
                values = values[..., 0]  # (runs, T)
                curves.append((key, curve_of(final.group, steps, values.mean(axis=0),
                                             values.min(axis=0), values.max(axis=0))))
    return curves


def curve_of(group: SweepGroup, steps: np.ndarray, center: np.ndarray, low: np.ndarray,
             high: np.ndarray) -> Curve:
    """A figure's ``Curve`` of ``group``, all arrays (T,)."""
    return Curve(name=group.name, series=group.series, sparsity=group.sparsity,
                 dense=group.dense, steps=steps, center=center, low=low, high=high)


def heatmap_values(finals: list[GroupFinal]) -> tuple[list[str], list[str], np.ndarray]:
    """``(group names, tasks, (groups, tasks) mean final score)``; tasks in order of first
    appearance, NaN where a group has no run of a task."""
    tasks = list(dict.fromkeys(t for f in finals for t in f.tasks))
    values = np.full((len(finals), len(tasks)), np.nan)
    for row, final in enumerate(finals):
        for column, task in enumerate(final.tasks):
            values[row, tasks.index(task)] = final.matrix[:, column].mean()
    return [f.group.name for f in finals], tasks, values


def draw_figures(finals: list[GroupFinal], sequential: list[SequentialGroup], score: str,
                 out_dir: Path, reps: int, confidence: float, seed: int) -> list[FigureNote]:
    """Draw and write every figure of the report (``report_figures``); a note per figure."""
    label = SCORE_LABELS.get(score, score)
    percent = f"{confidence:.0%}"
    notes = []

    curves = group_curves(finals, score, reps, confidence, seed)
    title = "Learning curves"
    if curves:
        save_figure(learning_curves_figure(curves, label, confidence), out_dir, "learning_curves")
        notes.append(FigureNote(title, ("learning_curves",), (
            f"IQM of the {label} over the pooled runs x tasks scores of each evaluation, with its "
            f"{percent} stratified-bootstrap interval as a band (the same resampled runs at every "
            "step); one panel per sparsity, the dense group in each.")))
    else:
        notes.append(FigureNote(title, skipped="no group's runs share an evaluation step"))

    title = "Final performance against sparsity"
    points = [FinalPoint(name=f.group.name, series=f.group.series, sparsity=f.group.sparsity,
                         dense=f.group.dense, iqm=f.result.iqm, low=f.result.ci_low,
                         high=f.result.ci_high) for f in finals]
    if any(not p.dense for p in points):
        save_figure(final_vs_sparsity_figure(points, label, confidence), out_dir,
                    "final_vs_sparsity")
        notes.append(FigureNote(title, ("final_vs_sparsity",), (
            f"Final IQM per sparse group with its {percent} interval as error bars, one line per "
            "method; the dense group as a horizontal band (its interval) and dashed line.")))
    else:
        notes.append(FigureNote(title, skipped="no sparse group has finished"))

    notes.append(plasticity_note(plasticity_curves(finals), out_dir))

    if sequential:
        notes.append(phase_average_note(sequential, label, out_dir, reps, confidence, seed))
        notes.append(frozen_share_note(sequential, out_dir, reps, confidence, seed))

    groups, tasks, values = heatmap_values(finals)
    save_figure(heatmap_figure(groups, tasks, values, label), out_dir, "final_per_task")
    notes.append(FigureNote("Final performance per task", ("final_per_task",), (
        f"Mean final {label} over the finished runs of each group (rows) on each task "
        "(columns).")))
    return notes


def plasticity_note(curves: list[tuple[str, Curve]], out_dir: Path) -> FigureNote:
    """One plasticity figure per sparse series, each with the dense groups' curves (one for the
    dense groups alone when no sparse group logged any), written; its note."""
    title = "Plasticity over training"
    if not curves:
        return FigureNote(title, skipped=(
            "the finished runs log no plasticity metric (plasticity/<network>/"
            f"{{{','.join(PLASTICITY_METRICS)}}}; plasticity.every_updates > 0 logs them)"))
    sparse_series = list(dict.fromkeys(c.series for _, c in curves if not c.dense))
    stems = []
    for series in sparse_series or ["dense"]:
        shown = [(key, c) for key, c in curves if c.dense or c.series == series]
        panels: dict[tuple[str, str], list[Curve]] = {}
        for key, curve in sorted(shown, key=lambda pair: plasticity_order(pair[0])):
            _, network, metric = key.split("/")
            panels.setdefault((network, metric), []).append(curve)
        stem = f"plasticity_{file_stem(series)}"
        save_figure(plasticity_figure(series, panels), out_dir, stem)
        stems.append(stem)
    return FigureNote(title, tuple(stems), (
        "Dormant-neuron fraction, effective rank (srank) and Fisher trace of each network over "
        "training, one figure per method with the dense group in every panel: mean over the "
        "finished seeds, the band from the lowest to the highest seed."))


def summary_section(paths: list[Path], groups: list[SweepGroup],
                    references: list[LoadedRun]) -> list[str]:
    """The report's title and how many runs were found, finished and not."""
    found = sum(len(g.finished) + len(g.unfinished) for g in groups)
    finished = sum(len(g.finished) for g in groups)
    where = ", ".join(f"`{p}`" for p in paths)
    also = (f" Besides them, {plural(len(references), 'single-task reference run')} of the "
            "sequential runs' tasks (only in the forward transfer)." if references else "")
    return ["# Sweep report", "",
            f"{plural(found, 'run')} in {where}, {plural(len(groups), 'group')}: {finished} "
            f"finished, {found - finished} unfinished (listed under Missing; they enter no "
            f"number and no figure).{also}", ""]


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


MIN_RUNS_FOR_INTERVALS = 3
"""Finished runs a group needs for its interval (and the dense group too, for a difference's)."""
TOO_FEW_RUNS = f"n/a (< {MIN_RUNS_FOR_INTERVALS} runs)"

def final_section(score: str | None, finals: list[GroupFinal], no_difference: str | None,
                  reps: int, confidence: float, seed: int) -> list[str]:
    """The final-performance table with how its numbers are computed."""
    lines = ["## Final performance", ""]
    if score is None:
        return [*lines, "No run has finished: there is nothing to aggregate.", ""]
    percent = f"{confidence:.0%}"
    label = SCORE_LABELS.get(score, score)
    lines += [f"Score: `{score}` ({label}, in [0, 1]) on each task at each finished run's last "
              "evaluation.", ""]
    header = ["group", "runs", "tasks", "IQM", f"{percent} CI"]
    if no_difference is None:
        header += ["Δ IQM vs dense", f"{percent} CI of Δ"]
    header.append("mean")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    dense_runs = next((f.result.runs for f in finals if f.group.dense), 0)
    for final in finals:
        r = final.result
        cells = [final.group.name, str(r.runs), str(r.tasks), f"{r.iqm:.3f}",
                 f"[{r.ci_low:.3f}, {r.ci_high:.3f}]" if r.runs >= MIN_RUNS_FOR_INTERVALS
                 else TOO_FEW_RUNS]
        if no_difference is None:
            cells += difference_cells(final, min(r.runs, dense_runs))
        cells.append(f"{r.mean:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", (
        f"IQM: interquartile mean of the runs x tasks final scores; CI: its {percent} percentile "
        "interval under the stratified bootstrap (runs resampled with replacement within each "
        f"task; Agarwal et al. 2021), {reps} replications, seed {seed}. Mean: plain mean of the "
        f"same scores. {TOO_FEW_RUNS}: a group with fewer than {MIN_RUNS_FOR_INTERVALS} finished "
        "runs gets no interval and no significance mark (resampling one or two runs per task "
        "gives an interval that says nothing; train more seeds).")]
    if no_difference is None:
        lines += ["", (
            "Δ: IQM(group) − IQM(dense); its CI is the percentile interval of IQM(group) − "
            "IQM(dense) over the replications, both groups resampled by the stratified bootstrap "
            "independently in each; `*`: the interval excludes 0.")]
    else:
        lines += ["", f"The difference to dense is omitted: {no_difference}."]
    return [*lines, ""]


FAILED_BELOW = 0.05
"""A run whose final score, averaged over its tasks, is below this failed on every task."""


def per_task_rows(finals: list[GroupFinal]) -> tuple[list[str], list[list[str]]]:
    """``(tasks, rows)``: per group its name, runs, per task ``mean ± std`` of the final score
    across its runs (sample standard deviation; ``–`` where the group has no run of the task)
    and its failed runs (mean over tasks below ``FAILED_BELOW``)."""
    tasks = list(dict.fromkeys(t for f in finals for t in f.tasks))
    rows = []
    for final in finals:
        cells = ["–"] * len(tasks)
        for column, task in enumerate(final.tasks):
            scores = final.matrix[:, column]
            spread = scores.std(ddof=1) if scores.size > 1 else 0.0
            cells[tasks.index(task)] = f"{scores.mean():.2f} ± {spread:.2f}"
        failed = int((final.matrix.mean(axis=1) < FAILED_BELOW).sum())
        rows.append([final.group.name, str(final.matrix.shape[0]), *cells, str(failed)])
    return tasks, rows


def per_task_section(score: str | None, finals: list[GroupFinal]) -> list[str]:
    """Per group and task, the mean ± standard deviation across runs of the final score, and
    the failed runs: which task a method helps or hurts, and whether seeds disagree."""
    if score is None:
        return []
    tasks, rows = per_task_rows(finals)
    header = ["group", "runs", *tasks, "failed runs"]
    lines = ["## Per task", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, "", (
        f"Each cell: mean ± sample standard deviation across the group's finished runs of the "
        f"final `{score}` of the task. Failed runs: runs whose final score averaged over their "
        f"tasks is below {FAILED_BELOW}."), ""]


@dataclass(frozen=True)
class SequentialGroup:
    """A sequential-schedule group's Continual World metrics (``sequential_metrics``)."""

    group: SweepGroup
    tasks: tuple[str, ...]
    """The schedule's order."""
    scores: tuple[SequentialScores, ...]
    """Per finished run with phased evaluations."""
    transfer: np.ndarray
    """(runs,) forward transfer of each run: the mean ``FT_i`` over the tasks with a reference
    (NaN without any)."""
    references: np.ndarray
    """(N,) finished reference runs of each task."""


def sequential_groups(finals: list[GroupFinal], references: list[LoadedRun],
                      score: str) -> list[SequentialGroup]:
    """The Continual World metrics of every sequential group among ``finals``, the forward
    transfer against the finished ``references`` (``split_references``) of the same agent."""
    groups = []
    for final in finals:
        config = final.group.finished[0].config
        if config.schedule != "sequential":
            continue
        tasks = config.task_names()
        scores = [sequential_scores(r.rows, tasks, score) for r in final.group.finished]
        scores = [s for s in scores if s is not None]
        if not scores:
            continue
        areas: list[list[float]] = [[] for _ in tasks]
        for run in references:
            task = run.config.task_names()[0]
            if run.finished is not None and is_reference_of(run.config, config):
                area, evaluations = reference_area(run.rows, task, score)
                if evaluations:
                    areas[tasks.index(task)].append(area)
        reference = np.array([np.mean(a) if a else np.nan for a in areas])
        transfer = [forward_transfer(s.area, reference) for s in scores]
        groups.append(SequentialGroup(
            final.group, tasks, tuple(scores),
            np.array([np.nanmean(t) if np.isfinite(t).any() else np.nan for t in transfer]),
            np.array([len(a) for a in areas])))
    return groups


def sequential_section(score: str | None, sequential: list[SequentialGroup],
                       references: list[LoadedRun], reps: int, confidence: float,
                       seed: int) -> list[str]:
    """For the sequential groups: Continual World's average performance, forgetting and forward
    transfer, each as the mean over runs with a bootstrap interval, and the average performance
    after every task; nothing when no group is sequential."""
    if score is None or not sequential:
        return []
    rows, counts = [], set()
    for entry in sequential:
        average = np.array([s.final_average for s in entry.scores])
        forgetting = np.array([s.mean_forgetting for s in entry.scores])
        counts.update(int(c) for s in entry.scores for c in s.evaluations_per_phase)
        cells = [entry.group.name, str(len(entry.scores))]
        for values in (average, forgetting, entry.transfer[np.isfinite(entry.transfer)]):
            if not values.size:
                cells += ["n/a", ""]
                continue
            mean, low, high = bootstrap_mean(values, reps, confidence, seed)
            cells += [f"{mean:.3f}", f"[{low:.3f}, {high:.3f}]"]
        cells.append(" ".join(f"{a:.2f}" for a in phase_averages(entry).mean(axis=0)))
        rows.append("| " + " | ".join(cells) + " |")
    percent = f"{confidence:.0%}"
    evaluation_counts = (f"{min(counts)}" if len(counts) == 1
                         else f"{min(counts)} to {max(counts)}")
    with_reference = sorted({int(c) for e in sequential for c in e.references})
    unfinished = sum(r.finished is None for r in references)
    reference_text = (
        "no finished single-task reference run was found, so forward transfer is n/a (a "
        "sweep of a sequential preset trains them: `reference-<task>/seed<N>`)"
        if with_reference == [0] else
        f"finished single-task reference runs per task: "
        f"{', '.join(map(str, with_reference))}"
        + (f" ({plural(unfinished, 'reference run')} unfinished)" if unfinished else ""))
    return ["## Sequential schedule", "",
            f"| group | runs | average after the last task | {percent} CI | forgetting | "
            f"{percent} CI | forward transfer | {percent} CI | average after each task |",
            "|" + "---|" * 9, *rows, "",
            f"Continual World's metrics (Wolczyk et al. 2021) of `{score}`. Average after task "
            "p: the mean over tasks 0..p at the end of phase p (after the last task: "
            "the average performance). Forgetting: per task, its score at the end of its own "
            "training minus its final score (0 for the last task), averaged over all the tasks. "
            f"Each end of a task is the mean of its phase's last {WINDOW} evaluations (fewer "
            "where the phase has fewer), as Continual World's code. Forward transfer: per task, "
            "(AUC - AUC_ref) / (1 - AUC_ref), AUC the mean score of the task over the "
            "evaluations of its own phase, AUC_ref the same of the single-task reference runs "
            "of that task with one phase's budget (averaged over them), then averaged over the "
            f"tasks with a reference; {reference_text}. Evaluations per task phase: "
            f"{evaluation_counts}. Means over runs; CI: percentile interval of the mean over "
            f"{reps} resamples of the runs, seed {seed}.", ""]


def phase_averages(entry: SequentialGroup) -> np.ndarray:
    """(runs, P) average performance after each phase of the runs that evaluated in every
    phase the group's first run did."""
    phases = len(entry.scores[0].average_after)
    return np.array([s.average_after for s in entry.scores if len(s.average_after) == phases])


def phase_average_note(sequential: list[SequentialGroup], label: str, out_dir: Path,
                       reps: int, confidence: float, seed: int) -> FigureNote:
    """The figure of the average performance after each task (one line per sequential group
    with its bootstrap band), written; its note."""
    curves = []
    for entry in sequential:
        after = phase_averages(entry)  # (runs, P)
        bounds = np.array([bootstrap_mean(after[:, p], reps, confidence, seed)
                           for p in range(after.shape[1])])  # (P, 3)
        group = entry.group
        curves.append(Curve(name=group.name, series=group.series, sparsity=group.sparsity,
                            dense=group.dense, steps=np.arange(after.shape[1]),
                            center=bounds[:, 0], low=bounds[:, 1], high=bounds[:, 2]))
    save_figure(phase_average_figure(curves, sequential[0].tasks, label, confidence), out_dir,
                "average_after_each_task")
    return FigureNote("Average performance after each task", ("average_after_each_task",), (
        f"Per sequential group: after training each task, the mean {label} of the tasks seen so "
        f"far (Continual World's average performance at that point), mean over the runs with "
        f"the {confidence:.0%} percentile interval of the mean over {reps} bootstrap resamples "
        "of the runs as a band."))


FROZEN_SHARE = "/frozen_fraction"
"""Ending of the metric a freezing method logs per network: ``<network>/<method>/frozen_fraction``
(IBM's share of the trunk frozen so far)."""


def frozen_after_each_task(rows: list[dict], network: str, phase_env_steps: int,
                           phases: int) -> np.ndarray | None:
    """(phases - 1,) the share of ``network``'s trunk frozen after each task but the last: the
    first logged value in the next task's phase (the method freezes at the boundary); None for
    a run that logs no such metric or misses a phase."""
    keys = sorted({k for r in rows for k in r
                   if k.startswith(f"{network}/") and k.endswith(FROZEN_SHARE)
                   and k.count("/") == 2})
    if not keys:
        return None
    shares = []
    for task in range(phases - 1):
        start, end = (task + 1) * phase_env_steps, (task + 2) * phase_env_steps
        values = [r[keys[0]] for r in rows if keys[0] in r and start < r["step"] <= end]
        if not values:
            return None
        shares.append(values[0])
    return np.array(shares, dtype=float)


def frozen_share_note(sequential: list[SequentialGroup], out_dir: Path, reps: int,
                      confidence: float, seed: int) -> FigureNote:
    """The figure of the trunk share each task freezes (groups whose runs log one), written;
    its note."""
    title = "Trunk frozen after each task"
    panels: dict[str, list[Curve]] = {}
    for network in ("actor", "critic"):
        for entry in sequential:
            config = entry.group.finished[0].config
            runs = [frozen_after_each_task(r.rows, network, config.phase_env_steps(),
                                           config.phases()) for r in entry.group.finished]
            runs = [r for r in runs if r is not None]
            if not runs:
                continue
            shares = np.stack(runs)  # (runs, phases - 1)
            bounds = np.array([bootstrap_mean(shares[:, p], reps, confidence, seed)
                               for p in range(shares.shape[1])])
            group = entry.group
            panels.setdefault(network, []).append(Curve(
                name=group.name, series=group.series, sparsity=group.sparsity, dense=group.dense,
                steps=np.arange(shares.shape[1]), center=bounds[:, 0], low=bounds[:, 1],
                high=bounds[:, 2]))
    if not panels:
        return FigureNote(title, skipped=(
            "no sequential run logs a frozen share (<network>/<method>/frozen_fraction, as "
            "IBM does)"))
    save_figure(frozen_share_figure(panels, sequential[0].tasks, confidence), out_dir,
                "frozen_after_each_task")
    return FigureNote(title, ("frozen_after_each_task",), (
        "Per sequential group whose method freezes weights (IBM): the share of the network's "
        "trunk kernels frozen after each task but the last (logged as <network>/<method>/"
        "frozen_fraction, read at the next task's first log), mean over the runs with the "
        f"{confidence:.0%} percentile interval of the mean over {reps} bootstrap resamples of "
        "the runs as a band; one panel per network."))


def difference_cells(final: GroupFinal, fewest_runs: int) -> list[str]:
    """The Δ and its interval as table cells; ``fewest_runs``: the smaller of the group's and
    the dense group's finished runs (below ``MIN_RUNS_FOR_INTERVALS``, no interval, no mark)."""
    if final.group.dense:
        return ["reference", ""]
    d = final.difference
    if d is None:
        return ["n/a (other tasks than dense)", ""]
    if fewest_runs < MIN_RUNS_FOR_INTERVALS:
        return [f"{d.value:+.3f}", TOO_FEW_RUNS]
    return [f"{d.value:+.3f}" + (" *" if d.excludes_zero else ""),
            f"[{d.low:+.3f}, {d.high:+.3f}]"]


def figures_section(notes: list[FigureNote]) -> list[str]:
    """Each figure (its PNG, with the SVG named) or why it was skipped."""
    lines = ["## Figures", ""]
    for note in notes:
        lines += [f"### {note.title}", ""]
        if note.skipped is not None:
            lines += [f"Skipped: {note.skipped}.", ""]
            continue
        lines += [note.caption, ""]
        for stem in note.stems:
            lines += [f"![{note.title}: {stem}]({stem}.png)", "",
                      f"Files: `{stem}.png`, `{stem}.svg`", ""]
    return lines


def missing_section(groups: list[SweepGroup],
                    planned: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """Runs a sweep planned but not started (``not_started``), unfinished runs (their last step
    and budget) and groups with fewer finished seeds than the most any group has."""
    lines = ["## Missing", ""]
    if planned:
        lines += ["### Runs not started", "", "| run | method | sparsity | seed |",
                  "|---|---|---|---|"]
        lines += [f"| `{path}` | {entry.get('method')} | {entry.get('sparsity')} | "
                  f"{entry.get('seed')} |" for path, entry in planned]
        lines.append("")
    lines += ["### Unfinished runs", ""]
    unfinished = [(g, r) for g in groups for r in g.unfinished]
    if unfinished:
        lines += ["| run | group | seed | last step | budget (env steps) |",
                  "|---|---|---|---|---|"]
        for group, run in unfinished:
            budget = run.config.total_env_steps
            lines.append(f"| `{run.path}` | {group.name} | {run.config.seed} | {run.last_step()} "
                         f"| {budget} ({run.last_step() / budget:.0%} done) |")
    else:
        lines.append("None: every run found has finished.")
    lines += ["", "### Groups with fewer finished seeds", ""]
    seeds = {g.label: {r.config.seed for r in g.finished} for g in groups}
    every_seed = set().union(*seeds.values())
    most = max(len(s) for s in seeds.values())
    short = [g for g in groups if len(seeds[g.label]) < most]
    if most == 0:
        lines.append("No group has a finished seed.")
    elif short:
        lines += ["| group | finished seeds | most in a group | seeds missing |",
                  "|---|---|---|---|"]
        for group in short:
            missing = ", ".join(map(str, sorted(every_seed - seeds[group.label])))
            lines.append(f"| {group.name} | {len(seeds[group.label])} | {most} | {missing} |")
    else:
        lines.append(f"None: every group has {plural(most, 'finished seed')}.")
    return [*lines, ""]
