"""Aggregate finished runs into a table: IQM of the final score with a stratified-bootstrap CI.

Following Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice" (NeurIPS), as
the reference paper does: each run contributes its final evaluation score on every task (a
``(runs, tasks)`` matrix per group), the interquartile mean is taken over all those scores, and
its confidence interval comes from ``rliable``'s stratified bootstrap (runs resampled within each
task). The score is the normalised return where runs log one (MiniGrid PPO), else the success
rate (Meta-World SAC).

Runs are grouped by the config fields in which they differ, seeds aside: runs of one method and
sparsity but different seeds form one group, labelled by those differing fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtrl_sparse.config import differing_fields, flat_fields
from mtrl_sparse.run_dir import CONFIG_FILE, read_config, read_metrics

SCORES = ("eval/normalized_return", "eval/success")
"""Score prefixes, the first one a run logs wins: per task ``<prefix>/<task>``."""
IGNORED_FIELDS = ("seed", "run_dir", "progress", "log_every_env_steps",
                  "checkpoint_every_env_steps", "keep_checkpoints", "plasticity")
"""Fields (or field groups) whose values never split runs into groups: the seed, and what only
decides what is logged or saved, never the numbers a run computes."""


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
    """Run directories among ``paths``: each path is a run, or holds runs one level below."""
    runs = []
    for path in paths:
        if (path / CONFIG_FILE).is_file():
            runs.append(path)
            continue
        below = sorted(p for p in path.glob(f"*/{CONFIG_FILE}"))
        if not below:
            raise ReportError(f"{path} is not a run directory and holds none")
        runs.extend(p.parent for p in below)
    return runs


def final_scores(run_dir: Path) -> tuple[str, dict[str, float]]:
    """``(score name, {task: final score})`` from the run's last evaluation row."""
    rows = [r for r in read_metrics(run_dir) if any(k.startswith(SCORES) for k in r)]
    if not rows:
        raise ReportError(f"{run_dir} has no evaluation row in its metrics")
    last = rows[-1]
    for prefix in SCORES:
        per_task = {k[len(prefix) + 1:]: float(v) for k, v in last.items()
                    if k.startswith(prefix + "/")}
        if per_task:
            return prefix, per_task
    raise ReportError(f"{run_dir}: its last evaluation row has no per-task score")


def group_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's label: ``field=value`` for the config fields that differ between runs (seeds
    and logging aside; a method's options only for runs that use that method), or the method
    name when none do."""
    configs = [read_config(d) for d in run_dirs]
    varying: list[str] = []
    for other in configs[1:]:
        for name in differing_fields(configs[0], other):
            if name not in varying and name.split(".")[0] not in IGNORED_FIELDS:
                varying.append(name)
    labels = []
    for config in configs:
        flat = flat_fields(config)
        used = {part for s in config.network_methods().values() for part in s.name.split("+")}
        relevant = [n for n in flat if n in varying  # in the config's field order
                    and not (n.startswith("methods.") and n.split(".")[1] not in used)]
        labels.append(" ".join(f"{n}={flat[n]}" for n in relevant) if relevant
                      else config.method)
    return labels


def aggregate(run_dirs: list[Path], reps: int = 2000, confidence: float = 0.95,
              seed: int = 0) -> tuple[str, list[GroupResult]]:
    """IQM and stratified-bootstrap interval per group of ``run_dirs``; the score's name."""
    from rliable import metrics

    scores = [final_scores(d) for d in run_dirs]
    names = {name for name, _ in scores}
    if len(names) > 1:
        raise ReportError(f"the runs log different scores ({', '.join(sorted(names))}); "
                          "report runs of one agent at a time")
    groups: dict[str, list[dict[str, float]]] = {}
    for label, (_, per_task) in zip(group_labels(run_dirs), scores, strict=True):
        groups.setdefault(label, []).append(per_task)
    matrices = {}
    for label, runs in groups.items():
        tasks = sorted(runs[0])
        if any(sorted(r) != tasks for r in runs):
            raise ReportError(f"group {label!r} mixes runs of different task sets")
        matrices[label] = np.array([[r[t] for t in tasks] for r in runs])  # (runs, tasks)

    intervals = {label: stratified_interval(matrix, reps, confidence, seed)
                 for label, matrix in matrices.items()}
    results = [
        GroupResult(label=label, runs=matrix.shape[0], tasks=matrix.shape[1],
                    iqm=float(metrics.aggregate_iqm(matrix)), ci_low=intervals[label][0],
                    ci_high=intervals[label][1], mean=float(np.mean(matrix)))
        for label, matrix in matrices.items()
    ]
    return names.pop(), results


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


def markdown_table(score: str, results: list[GroupResult], confidence: float = 0.95) -> str:
    """The groups as a Markdown table, one row each."""
    percent = f"{confidence:.0%}"
    lines = [f"| group | runs | tasks | IQM {score} | {percent} CI | mean |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.label} | {r.runs} | {r.tasks} | {r.iqm:.3f} | "
                     f"[{r.ci_low:.3f}, {r.ci_high:.3f}] | {r.mean:.3f} |")
    return "\n".join(lines)
