"""Series that runs log over training, read from their metrics rows and aligned across runs.

Rows are ``metrics.jsonl`` rows (``mtrl_sparse.run_dir.read_metrics``): dicts with a ``step`` (env
steps) and named values; a series is the steps at which a run logged every one of some names.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def step_series(rows: list[dict[str, Any]] | tuple[dict[str, Any], ...],
                keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps (T,), values (T, len(keys)))`` of the rows holding every one of ``keys`` as a
    number, ascending in env steps (a step logged twice: its last row)."""
    by_step = {int(r["step"]): [float(r[k]) for k in keys] for r in rows
               if all(isinstance(r.get(k), int | float) for k in keys)}
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=float).reshape(len(steps), len(keys))


def align(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Runs' ``(steps (T_i,), values (T_i, ...))`` at the steps all of them logged:
    ``(steps (T,), values (runs, T, ...))``."""
    common = sorted(set.intersection(*(set(steps.tolist()) for steps, _ in series)))
    stacked = [values[np.searchsorted(steps, common)] for steps, values in series]
    return np.array(common, dtype=np.int64), np.stack(stacked)
