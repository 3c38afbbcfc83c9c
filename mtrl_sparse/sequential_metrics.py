"""Metrics of a sequential-task run (``--schedule sequential``) from its evaluation rows.

Every evaluation row of such a run carries the ``phase`` it was taken in (the index of the task
being trained) and the score of every task; the run loop evaluates at the end of every phase.
With ``s_i(e)`` the score of task ``i`` at evaluation ``e`` and ``E_p`` the last evaluation of
phase ``p``:

- average performance after task ``p``: ``A_p = mean_{i <= p} s_i(E_p)``, over the tasks seen
  so far (Continual World, Wolczyk et al. 2021; Chaudhry et al. 2018); ``A_{P-1}`` covers every
  task;
- forgetting of task ``i`` (``i`` < the last task): ``F_i = max_e s_i(e) - s_i(final)``, the
  maximum over the evaluations taken while task ``i`` or a later one was trained, the final
  evaluation excepted: how much of its best score since it was learned the run lost by its end
  (negative when the final score beats every earlier one). The last task is never followed by
  another and has no forgetting.

Forward transfer needs single-task reference runs, which the project does not train; it is not
computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PHASE_FIELD = "phase"


@dataclass(frozen=True)
class SequentialScores:
    """One run's sequential metrics (module docstring) for one score.

    Attributes:
        average_after: (P,) ``A_p`` for each phase that has an evaluation, in phase order.
        forgetting: (T - 1,) ``F_i`` of every task but the last.
    """

    average_after: np.ndarray
    forgetting: np.ndarray

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
                      tasks: tuple[str, ...], score: str) -> SequentialScores | None:
    """The metrics of one run's metrics ``rows`` for ``score`` (``eval/normalized_return``,
    ``eval/success``) over ``tasks`` in schedule order; None for a run without phased
    evaluations (a multi-task run)."""
    evals = evaluation_rows(rows, score)
    if not evals:
        return None
    per_task = np.array([[float(r[f"{score}/{t}"]) for t in tasks] for r in evals])  # (E, T)
    phases = np.array([int(r[PHASE_FIELD]) for r in evals])
    average = [per_task[np.flatnonzero(phases == p)[-1], :p + 1].mean()
               for p in sorted(set(phases.tolist()))]
    final = per_task[-1]
    earlier = per_task[:-1]
    forgetting = np.zeros(len(tasks) - 1)
    for i in range(len(tasks) - 1):
        since = earlier[phases[:-1] >= i, i]
        forgetting[i] = since.max() - final[i] if since.size else 0.0
    return SequentialScores(np.array(average), forgetting)


def bootstrap_mean(values: np.ndarray, reps: int, confidence: float, seed: int
                   ) -> tuple[float, float, float]:
    """(mean, low, high) of (runs,) ``values``: their mean and the central ``confidence``
    percentile interval of the mean over ``reps`` resamples of the runs with replacement."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(reps, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(values.mean()), float(low), float(high)
