"""Metrics of a sequential-task run (``--schedule sequential``) from its evaluation rows, as
Continual World defines them (Wolczyk et al. 2021, "Continual World: A Robotic Benchmark For
Continual Reinforcement Learning", NeurIPS; Chaudhry et al. 2018).

Every evaluation row of such a run carries the ``phase`` it was taken in (the index of the task
being trained) and the score of every task; the run loop evaluates every
``--eval-every-env-steps`` and at the end of every phase. With ``s_i(e)`` the score of task ``i``
at evaluation ``e``, ``W_p`` the last ``window`` evaluations of phase ``p`` (all of them if it
has fewer; Continual World's code averages the last 5, ``results_processing/tables.py``),
``s_i(W_p)`` the mean of ``s_i`` over them, and N tasks:

- average performance after task ``p``: ``A_p = mean_{i <= p} s_i(W_p)``, over the tasks seen
  so far; ``A_{N-1}``, the mean over all N tasks at the end, is Continual World's average
  performance;
- forgetting of task ``i``: ``F_i = s_i(W_i) - s_i(W_{N-1})``, its score at the end of its own
  training minus its score at the end of the run; the last task's is 0, and the run's forgetting
  is the mean over all N tasks (Continual World's). Averaging a window at each end, rather than
  taking a maximum over evaluations, keeps evaluation noise from biasing it.

- forward transfer of task ``i``: ``FT_i = (AUC_i - AUC_i^ref) / (1 - AUC_i^ref)``, with
  ``AUC_i`` the area under task ``i``'s curve over its own training interval, normalised by the
  interval's length: here the mean of ``s_i(e)`` over the evaluations ``e`` of phase ``i`` (at
  the run's evaluation cadence and at the phase's end); ``AUC_i^ref`` the same of
  single-task reference runs of task ``i`` with one phase's budget (the mean of their
  evaluations, averaged over the reference runs). The run's forward transfer is the mean over the
  tasks that have a reference (``FT_i`` is undefined where ``AUC_i^ref = 1``). Positive: the
  earlier tasks made task ``i`` faster to learn than from scratch. With one evaluation per phase,
  the "area" is the score at the phase's end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PHASE_FIELD = "phase"
WINDOW = 5
"""Evaluations averaged at each end of a phase (Continual World's code: the last 5)."""


@dataclass(frozen=True)
class SequentialScores:
    """One run's sequential metrics (module docstring) for one score.

    Attributes:
        average_after: (P,) ``A_p`` for each phase that has an evaluation, in phase order.
        forgetting: (N,) ``F_i`` of every task (0 for the last, and for a task whose phase
            has no evaluation).
        evaluations_per_phase: (P,) evaluations taken in each phase that has one.
        area: (N,) ``AUC_i``: the mean score of task ``i`` over the evaluations of its own
            phase (NaN for a task whose phase has no evaluation).
    """

    average_after: np.ndarray
    forgetting: np.ndarray
    evaluations_per_phase: np.ndarray
    area: np.ndarray

    @property
    def final_average(self) -> float:
        return float(self.average_after[-1])

    @property
    def mean_forgetting(self) -> float:
        return float(self.forgetting.mean()) if self.forgetting.size else 0.0


def evaluation_rows(rows: list[dict[str, Any]] | tuple[dict[str, Any], ...],
                    score: str) -> list[dict[str, Any]]:
    """The evaluation rows (holding per-task ``score/<task>`` values and a phase), ascending in
    env steps; a step logged twice counts once (its last row)."""
    prefix = score + "/"
    by_step = {int(r["step"]): r for r in rows
               if PHASE_FIELD in r and any(k.startswith(prefix) for k in r)}
    return [by_step[s] for s in sorted(by_step)]


def sequential_scores(rows: list[dict[str, Any]] | tuple[dict[str, Any], ...],
                      tasks: tuple[str, ...], score: str, window: int = WINDOW
                      ) -> SequentialScores | None:
    """The metrics of one run's metrics ``rows`` for ``score`` (``eval/normalized_return``,
    ``eval/success``) over ``tasks`` in schedule order, each end of a phase the mean of its last
    ``window`` evaluations; None for a run without phased evaluations (a multi-task run)."""
    evals = evaluation_rows(rows, score)
    if not evals:
        return None
    per_task = np.array([[float(r[f"{score}/{t}"]) for t in tasks] for r in evals])  # (E, N)
    phases = np.array([int(r[PHASE_FIELD]) for r in evals])
    seen = sorted(set(phases.tolist()))
    end_of = {p: per_task[np.flatnonzero(phases == p)[-window:]].mean(axis=0)
              for p in seen}  # s(W_p), (N,)
    average = [end_of[p][:p + 1].mean() for p in seen]
    final = end_of[seen[-1]]
    forgetting = np.array([end_of[i][i] - final[i] if i in end_of else 0.0
                           for i in range(len(tasks))])
    area = np.array([per_task[phases == i, i].mean() if i in end_of else np.nan
                     for i in range(len(tasks))])
    return SequentialScores(np.array(average), forgetting,
                            np.array([np.sum(phases == p) for p in seen]), area)


def reference_area(rows: list[dict[str, Any]] | tuple[dict[str, Any], ...], task: str,
                   score: str) -> tuple[float, int]:
    """``(AUC^ref, evaluations)`` of a single-task reference run of ``task``: the mean of its
    ``score/<task>`` over its evaluation rows (NaN and 0 without any)."""
    key = f"{score}/{task}"
    by_step = {int(r["step"]): float(r[key]) for r in rows if isinstance(r.get(key), int | float)}
    values = list(by_step.values())
    return (float(np.mean(values)) if values else float("nan")), len(values)


def forward_transfer(area: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N,) ``FT_i = (AUC_i - AUC_i^ref) / (1 - AUC_i^ref)`` of a run's (N,) ``area`` against
    (N,) reference areas; NaN where the reference is missing (NaN) or perfect (1: nothing left
    to transfer)."""
    room = 1.0 - reference
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(room > 0.0, (area - reference) / room, np.nan)


def bootstrap_mean(values: np.ndarray, reps: int, confidence: float, seed: int
                   ) -> tuple[float, float, float]:
    """(mean, low, high) of (runs,) ``values``: their mean and the central ``confidence``
    percentile interval of the mean over ``reps`` resamples of the runs with replacement."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(reps, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(values.mean()), float(low), float(high)
