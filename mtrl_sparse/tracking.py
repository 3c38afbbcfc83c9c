"""Weights & Biases tracking: one W&B run per run directory, mirroring what the run writes.

With ``--track`` (or ``--wandb.project``; ``config.WandbConfig``) each run directory of a
``train`` (one run or a vmapped group) or of a sweep gets its own W&B run, and:

- its config: the resolved run config of ``config.json``, with ``run_dir`` the directory's
  absolute path, and the agent, the preset, the run's id and its provenance (the versions of
  mtrl-sparse and of the packages that decide the numbers, the git commit: the code version);
- its history: the scalars of every metrics row under the names TensorBoard gives them
  (``run_dir.scalars_of``), at the W&B step of the row's env step (rows of one env step, e.g. a
  training row and an evaluation, form one W&B row);
- its id, in ``<run_dir>/wandb_id``: a resumed run continues the same W&B run, and rows it
  writes again (those after its checkpoint) that W&B already holds are not sent twice.

Tracking observes: it reads rows after they are written and never touches a run's state or
random keys, so a tracked run computes the numbers of an untracked one. ``wandb`` is imported
only here, when a tracked run starts (the wandb extra; ``config.validate`` refuses ``--track``
without it). W&B's local files, offline runs included (``WANDB_MODE=offline``, uploaded later
with ``wandb sync``), go to ``<run_dir>/wandb/`` unless ``WANDB_DIR`` says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtrl_sparse.config import RunConfig
from mtrl_sparse.run_dir import CONFIG_FILE, WANDB_ID_FILE, RowMirror
from mtrl_sparse.stops import RunStopped

DEFAULT_PROJECT = "mtrl-sparse"
"""The W&B project of a run without ``--wandb.project`` when ``WANDB_PROJECT`` is unset."""


class TrackingError(RunStopped):
    """W&B did not start a run (no login, no network, a refused project) before the run
    trained further; ``train --auto-resume`` continues it."""


def wandb_config(run_dir: Path) -> dict[str, Any]:
    """What a tracked run records as its W&B config: ``config.json``'s resolved config (with
    ``run_dir`` the absolute path) and its agent, preset, run id and provenance."""
    stored = json.loads((run_dir / CONFIG_FILE).read_text())
    return {**stored["config"], "run_dir": str(run_dir.resolve()),
            **{key: stored.get(key) for key in ("agent", "preset", "run_id", "provenance")}}


def wandb_run_id(run_dir: Path) -> str:
    """The id of the run's W&B run: the one stored in ``wandb_id``, or a new one stored there."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]  # W&B's ids: letters and digits, unique within a project
    path.write_text(run_id + "\n")
    return run_id


def start_wandb_run(run_dir: Path, config: RunConfig) -> Any:
    """A W&B run for ``run_dir`` (a new one, or the one its ``wandb_id`` names), left open
    beside the other runs of this process; ``TrackingError`` when W&B refuses to start it."""
    import wandb

    settings, run_id, recorded = config.wandb, wandb_run_id(run_dir), wandb_config(run_dir)
    try:
        return wandb.init(
            project=settings.project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
            entity=settings.entity, group=settings.group, name=settings.name or run_dir.name,
            tags=list(settings.tags), config=recorded, id=run_id, resume="allow",
            dir=os.environ.get("WANDB_DIR") or str(run_dir), reinit="create_new")
    except Exception as error:  # wandb.errors.Error or a settings error: its line says why
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TrackingError(
            f"W&B did not start tracking {run_dir}: {first_line} (WANDB_MODE=offline tracks "
            "without a network); the run stopped before training further: the same command "
            "with --auto-resume continues it") from None


class WandbMirror:
    """``MetricsLogger``'s mirror (``run_dir.RowMirror``) logging to a W&B ``run`` at W&B step
    = env step. Rows and videos at steps W&B has passed are skipped: a resumed run writes again
    the rows after its checkpoint, which W&B already holds (the same numbers), and W&B would
    refuse them."""

    def __init__(self, run: Any):
        self.run = run

    def log(self, scalars: dict[str, Any], step: int) -> None:
        if step >= self.run.step:
            self.run.log(scalars, step=step)

    def log_video(self, tag: str, path: Path, step: int) -> None:
        import wandb

        if step >= self.run.step:
            self.run.log({tag: wandb.Video(str(path), format=path.suffix.lstrip("."))},
                         step=step)


@contextlib.contextmanager
def tracked(run_dir: Path, config: RunConfig) -> Iterator[RowMirror | None]:
    """For the block, the mirror of ``run_dir``'s W&B run (None when ``config`` does not track);
    the W&B run finishes with the block, marked failed (with the exit status of the
    ``RunStopped`` that ended it) when an exception does."""
    if not config.wandb.enabled():
        yield None
        return
    run = start_wandb_run(run_dir, config)
    try:
        yield WandbMirror(run)
    except BaseException as error:
        run.finish(exit_code=getattr(error, "exit_code", 1))
        raise
    run.finish()
