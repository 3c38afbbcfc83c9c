"""The run loop: one schedule for every agent kind, and checkpoint evaluation.

Data flows one way: config -> the agent kind of ``config.AGENT`` (``AGENT_KINDS``: envs, agent,
jitted steps) -> the loop below -> the run directory. The loop never names a method or an agent;
it owns what every run shares:

- the run directory: created for a new run; on ``--resume`` the stored config, which may differ
  only by a raised ``total_env_steps`` (``prepare_run_dir``);
- the schedule: iterations of the agent kind (a vector step, a rollout) until the first boundary
  at or after the kind's budget; after each, at interval crossings, a training metrics row
  (``log_every_env_steps``), a plasticity row (``plasticity.every_updates``, in updates), an
  evaluation (``eval_every_env_steps``; and at the end) whose row also carries the masks'
  statistics (``mask_stats``: per-layer density, the topology's movement since the previous
  evaluation, the trunk features each task's head reads; a sparse run also logs them for its
  initial masks at step 0), videos at the evaluations that cross a multiple of
  ``video_every_env_steps`` (``mtrl_sparse.videos``; they never change the run's numbers), and a
  checkpoint at the first boundary after every ``checkpoint_every_env_steps`` (and at the end);
- a sequential schedule's phases (``config.schedule``): before every iteration the group is told
  the phase of its env step (``set_phase``), an evaluation ends every phase, and its evaluation
  rows carry the ``phase`` they were taken in;
- episode statistics of training (``EpisodeTracker``), timing, the progress bar and the summary.

A checkpoint holds the kind's device state and, as JSON: the env step, the last evaluation row,
the episode statistics, the masks of the last evaluation (bits) and the kind's own metadata
(environment states, keys). On resume the rows logged after it are dropped and written again, so
a resumed run ends with the rows of an uninterrupted one.

Faults (``mtrl_sparse.stops``): the run directory is locked for the run's life (a second command
on it is refused); a preemption signal (SIGTERM, SIGUSR1) makes the loop checkpoint at the next
boundary and raise ``PreemptedError``; a full disk, a failed environment and a non-finite value
each raise their ``RunStopped`` with one line naming what and where, the last checkpoint intact.

Metrics fields whose name starts with ``time/`` are wall-clock measurements: ``time/eval_s`` is
the seconds of the evaluation on its row, ``time/env_steps_per_s`` and ``time/updates_per_s`` the
rates since the previous training row, ``time/elapsed_s`` the seconds since the loop started.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mtrl_sparse.agent_kind import AgentKind, EpisodeTracker, OneRun, RunGroup
from mtrl_sparse.agents.sparse_linear import kernels_available
from mtrl_sparse.checkpointing import Checkpointer, has_checkpoint, restore_latest_readable
from mtrl_sparse.config import ConfigError, RunConfig, differing_fields, validate
from mtrl_sparse.envs.base import EnvFailure
from mtrl_sparse.mask_stats import (
    NetworkMasks,
    masks_row,
    pack_masks,
    per_task_labels,
    unpack_masks,
)
from mtrl_sparse.off_policy import OffPolicyRun
from mtrl_sparse.off_policy_group import VmappedOffPolicyRuns
from mtrl_sparse.on_policy import OnPolicyRun
from mtrl_sparse.on_policy_group import VmappedOnPolicyRuns
from mtrl_sparse.run_dir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    EVAL_DIR,
    FINISHED_FILE,
    MetricsLogger,
    RowMirror,
    RunDirError,
    check_new_run_dir,
    clear_uncommitted,
    crossed,
    lock_run_dir,
    read_config,
    read_run_id,
    truncate_metrics,
    write_config,
    write_finished,
)
from mtrl_sparse.stops import (
    EnvFailedError,
    NonFiniteLossError,
    OutOfSpaceError,
    PreemptedError,
    RunStopped,
    StopRequest,
    catch_preemption,
    error_summary,
)
from mtrl_sparse.tracking import tracked
from mtrl_sparse.videos import Video, frame_strip, video_dir, write_videos

AGENT_KINDS: dict[str, type[AgentKind]] = {"sac": OffPolicyRun, "ppo": OnPolicyRun}
"""The agent kind of each config's ``AGENT``: off-policy with a replay buffer, on-policy with
rollouts."""

GROUP_KINDS: dict[str, type[RunGroup]] = {"ppo": VmappedOnPolicyRuns, "sac": VmappedOffPolicyRuns}
"""The agents whose runs can share one vmapped program (``train_group``)."""

MEASURED_MASKS = "measured_masks"
"""Checkpoint metadata: the masks of the run's last mask measurement (``mask_stats``), so that a
resumed run measures the topology's movement against the masks an uninterrupted run would."""

RESUMABLE_FIELDS = ("total_env_steps", "run_dir", "progress", "video_every_env_steps")
"""Config fields a resumed run may change (``total_env_steps`` only upwards)."""

WALL_TIME_PARTS = ("env", "agent", "compile", "eval", "logging", "checkpoint")
"""Parts of ``RunResult.seconds`` besides ``total``: inside the envs; the agent's jitted calls
and their host bookkeeping; first calls of each compiled variant; evaluations; metrics rows and
plasticity probes; checkpoints."""


@dataclass
class RunResult:
    """What a finished run (or an evaluated checkpoint) reports."""

    run_dir: Path
    env_steps: int
    updates: int
    task_names: tuple[str, ...]
    final_success: np.ndarray | None
    """The last evaluation's success rate per task (None before any evaluation)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time by part (``WALL_TIME_PARTS``) and in ``total``."""
    final_normalized_return: np.ndarray | None = None
    """MiniGrid runs: the last evaluation's normalised return per task."""


def run_result(run_dir: Path, env_steps: int, updates: int, task_names: tuple[str, ...],
               eval_row: dict[str, Any] | None, seconds: dict[str, float] | None = None
               ) -> RunResult:
    """A ``RunResult`` with the per-task scores of an evaluation row (``eval/...`` fields)."""

    def per_task(score: str) -> np.ndarray | None:
        if eval_row is None or f"{score}/{task_names[0]}" not in eval_row:
            return None
        return np.array([eval_row[f"{score}/{t}"] for t in task_names])

    return RunResult(run_dir=run_dir, env_steps=env_steps, updates=updates,
                     task_names=task_names, final_success=per_task("eval/success"),
                     seconds=seconds or {},
                     final_normalized_return=per_task("eval/normalized_return"))


def default_run_dir(config: RunConfig) -> Path:
    """``runs/<benchmark>-<method>-s<seed>-<timestamp>`` (``mixed`` where the networks run
    different methods; their sparsities and interval scales do not count)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    names = {settings.name for settings in config.network_methods().values()}
    label = names.pop() if len(names) == 1 else "mixed"
    return Path("runs") / f"{config.env.benchmark.lower()}-{label}-s{config.seed}-{stamp}"


def prepare_run_dir(config: RunConfig, resume: bool, preset: str | None,
                    stack: contextlib.ExitStack) -> Path:
    """Check (and for a new run create) the run directory, lock it for the life of ``stack``
    (``lock_run_dir``: a second command on it is refused); return its path.

    On resume, ``config`` may differ from the stored config only in ``RESUMABLE_FIELDS``, with
    ``total_env_steps`` not lowered; anything else is a ``ConfigError``.
    """
    if not resume:
        run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
        check_new_run_dir(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(
                f"run dir {run_dir} is not writable ({error.strerror or error})"
            ) from None
        stack.callback(os.close, lock_run_dir(run_dir))
        check_new_run_dir(run_dir)  # another command may have taken it before the lock
        write_config(run_dir, replace(config, run_dir=str(run_dir)), preset)
        return run_dir
    if config.run_dir is None:
        raise RunDirError("--resume needs --run-dir, the directory of the run to continue")
    run_dir = Path(config.run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"--resume: {run_dir} holds no run ({CONFIG_FILE} missing)")
    stack.callback(os.close, lock_run_dir(run_dir))
    stored = read_config(run_dir)
    differ = [f for f in differing_fields(stored, config) if f not in RESUMABLE_FIELDS]
    if differ:
        raise ConfigError(
            f"--resume continues the stored config; these differ from it: {', '.join(differ)} "
            "(only --total-steps may be raised)"
        )
    if config.total_env_steps < stored.total_env_steps:
        raise ConfigError(
            f"--total-steps {config.total_env_steps} is below the run's "
            f"{stored.total_env_steps}; it may only be raised"
        )
    write_config(run_dir, replace(stored, total_env_steps=config.total_env_steps), preset)
    if config.total_env_steps > stored.total_env_steps:  # more to train: not finished any more
        (run_dir / FINISHED_FILE).unlink(missing_ok=True)
    return run_dir


def train(config: RunConfig, *, resume: bool = False, preset: str | None = None) -> RunResult:
    """Train as ``config`` says (its agent chooses the kind); with ``resume``, continue
    ``config.run_dir`` from its latest checkpoint.

    Raises ``ConfigError`` / ``RunDirError`` (usage errors, before anything is written) and
    ``NonFiniteLossError``.
    """
    return train_group([config], resume=resume, preset=preset)[0]


def video_problem(config: RunConfig) -> str | None:
    """Why videos of ``config``'s run cannot be made here (one line), or None."""
    return AGENT_KINDS[config.AGENT].video_problem(config)


def make_group(configs: list[RunConfig]) -> RunGroup:
    """The ``RunGroup`` of ``configs``: one run on its own, or runs that share one program
    (``GROUP_KINDS``; ``ConfigError`` if they may not)."""
    agent = configs[0].AGENT
    if len(configs) == 1:
        return OneRun(AGENT_KINDS[agent](configs[0]))
    if agent not in GROUP_KINDS or any(agent != c.AGENT for c in configs):
        raise ConfigError(f"runs of agent {agent!r} cannot be vmapped together yet; "
                          f"vmapped groups: {', '.join(GROUP_KINDS)}")
    return GROUP_KINDS[agent](configs)


def train_group(configs: list[RunConfig], *, resume: bool = False,
                preset: str | None = None) -> list[RunResult]:
    """Train the runs of ``configs`` in lockstep as one ``RunGroup`` (``make_group``), each
    into its own run directory, as ``train`` trains one; with ``resume``, continue every run
    from its latest checkpoint (all at the same env step)."""
    for config in configs:
        validate(config)
    if configs[0].video_every_env_steps:
        problem = video_problem(configs[0])
        if problem is not None:
            raise ConfigError(f"--video-every-env-steps: {problem}")
    if configs[0].compute != "dense" and not kernels_available():
        print(f"mtrl-sparse: --compute {configs[0].compute}: no sparse kernels for this run (the "
              "extension was not built, e.g. no C++ compiler at install, or the platform is not "
              "the CPU); masked layers run the pure-JAX dense fallback", file=sys.stderr)
    if not resume:
        for config in configs:
            if config.run_dir:
                check_new_run_dir(Path(config.run_dir))
    group = make_group(configs)
    with contextlib.ExitStack() as stack:
        stack.callback(group.close)
        run_dirs = [prepare_run_dir(config, resume, preset, stack) for config in configs]
        if resume:
            resume = _has_checkpoints(run_dirs)
        checkpointers = [Checkpointer(d / CHECKPOINT_DIR, c.keep_checkpoints, read_run_id(d),
                                      writer=True)
                         for d, c in zip(run_dirs, configs, strict=True)]
        for checkpointer in checkpointers:
            stack.callback(checkpointer.close)
        episodes = [EpisodeTracker(group.task_names, group.num_envs) for _ in configs]
        stop = stack.enter_context(catch_preemption())
        try:
            if not resume:
                group.start()
                return _loop(configs[0], group, run_dirs, checkpointers, episodes, 0,
                             [None] * len(configs), group.masks(), stop,
                             _mirrors(run_dirs, configs, stack))
            start_step, last_evals, measured = _restore(group, run_dirs, checkpointers, episodes)
            if start_step >= group.budget_env_steps:  # the runs are complete: nothing to add
                for run_dir, last_eval in zip(run_dirs, last_evals, strict=True):
                    write_finished(run_dir, start_step, group.updates(), last_eval)
                return [run_result(d, start_step, group.updates(), group.task_names, last_eval)
                        for d, last_eval in zip(run_dirs, last_evals, strict=True)]
            return _loop(configs[0], group, run_dirs, checkpointers, episodes, start_step,
                         last_evals, measured, stop, _mirrors(run_dirs, configs, stack))
        except EnvFailure as error:
            raise EnvFailedError(f"{error}; {_intact(run_dirs)}") from None
        except NonFiniteLossError as error:  # resuming would meet it again
            raise NonFiniteLossError(f"{error}; the checkpoints before it are intact") from None
        except OutOfSpaceError as error:  # (a preempted run's line already says all this)
            raise OutOfSpaceError(f"{error}; {_intact(run_dirs)}") from None


def _mirrors(run_dirs: list[Path], configs: list[RunConfig],
             stack: contextlib.ExitStack) -> list[RowMirror | None]:
    """Each run's W&B run for the life of ``stack`` (``tracking.tracked``; None: untracked)."""
    return [stack.enter_context(tracked(run_dir, config))
            for run_dir, config in zip(run_dirs, configs, strict=True)]


def _has_checkpoints(run_dirs: list[Path]) -> bool:
    """Whether the runs to resume hold checkpoints (True); runs killed before their first one
    are cleared to start afresh (False); ``RunDirError`` when only some do."""
    committed = [has_checkpoint(d / CHECKPOINT_DIR) for d in run_dirs]
    if all(committed):
        return True
    if any(committed):
        empty = [str(d) for d, c in zip(run_dirs, committed, strict=True) if not c]
        raise RunDirError(f"cannot resume the runs together: {', '.join(empty)} hold no "
                          "checkpoint while the others do")
    for run_dir in run_dirs:  # killed before its first checkpoint: nothing to continue
        print(f"mtrl-sparse: {run_dir} holds no checkpoint yet; the run starts afresh "
              "from its stored config", file=sys.stderr)
        clear_uncommitted(run_dir)
    return False


def _restore(group: RunGroup, run_dirs: list[Path], checkpointers: list[Checkpointer],
             episodes: list[EpisodeTracker]
             ) -> tuple[int, list[dict[str, Any] | None], list[dict[str, NetworkMasks] | None]]:
    """Restore ``group`` from the runs' latest readable checkpoints (all at one env step); drop
    the rows logged after it; return the step, each run's last evaluation row and the masks of
    its last measurement (None from a checkpoint saved before they were kept)."""
    steps = {checkpointer.latest_step() for checkpointer in checkpointers}
    if len(steps) > 1:
        raise RunDirError(f"cannot resume the runs together: their latest checkpoints are "
                          f"at different env steps {sorted(steps)}")
    try:
        start_step, saved = restore_latest_readable(
            checkpointers, group.abstract_states(),
            lambda line: print(f"mtrl-sparse: {line}", file=sys.stderr))
    except ValueError as error:
        raise RunDirError(f"cannot resume {', '.join(map(str, run_dirs))}: {error}") from None
    group.restore(saved)
    if start_step < group.budget_env_steps:
        for run_dir, tracker, (_, meta) in zip(run_dirs, episodes, saved, strict=True):
            truncate_metrics(run_dir, start_step)
            tracker.load(meta["episodes"])
    measured = [unpack_masks(meta[MEASURED_MASKS]) if meta.get(MEASURED_MASKS) is not None
                else None for _, meta in saved]
    return start_step, [meta["last_eval"] for _, meta in saved], measured


def _intact(run_dirs: list[Path]) -> str:
    """The end of a stop's line: what is intact and the command that continues."""
    target = run_dirs[0] if len(run_dirs) == 1 else run_dirs[0].parent
    return (f"the last checkpoint and the rows up to it are intact; continue with: "
            f"mtrl-sparse train --auto-resume --run-dir {target}")


def _loop(config: RunConfig, group: RunGroup, run_dirs: list[Path],
          checkpointers: list[Checkpointer], episodes: list[EpisodeTracker], env_steps: int,
          last_evals: list[dict[str, Any] | None],
          measured: list[dict[str, NetworkMasks] | None], stop: StopRequest,
          mirrors: list[RowMirror | None]) -> list[RunResult]:
    """Iterations of ``group`` from ``env_steps`` to the end of its runs (see the module
    docstring; ``config`` gives the schedule all the runs share); returns each run's summary.
    Every run's rows go to its run directory and to its ``mirrors`` entry (W&B), if any.
    ``measured``: each run's masks at its last mask measurement (at step 0: the initial masks,
    whose row is written first). Once ``stop`` is requested (a preemption signal) the runs
    checkpoint at the next boundary and ``PreemptedError`` ends the loop."""
    labels = {**group.array_labels, **per_task_labels(group.task_names)}
    loggers = [MetricsLogger(d, labels, purge_step=env_steps or None, mirror=mirror)
               for d, mirror in zip(run_dirs, mirrors, strict=True)]
    if env_steps == 0:
        for logger, masks in zip(loggers, measured, strict=True):
            if masks:
                logger.write({"step": 0, **masks_row(masks, None, group.layer_slices)})
    seconds = dict.fromkeys(WALL_TIME_PARTS, 0.0)
    bar = tqdm(total=group.budget_env_steps, initial=env_steps, unit="step", unit_scale=True,
               dynamic_ncols=True, disable=not config.progress, desc="env steps")
    postfix: dict[str, str] = {}
    t_start = t_row = time.perf_counter()
    updates = updates_at_row = group.updates()
    steps_at_row = env_steps
    checkpoint_due = False
    every_probe = config.plasticity.every_updates
    sequential = config.phases() > 1
    evaluated_at = env_steps  # the env step of the latest evaluation (videos cross from it)
    try:
        while True:
            phase = config.phase_at(env_steps)
            if sequential:
                group.set_phase(phase)
            iteration = group.iterate(episodes)
            for part, value in iteration.seconds.items():
                seconds[part] += value
            before, env_steps = env_steps, env_steps + iteration.env_steps
            updates_before, updates = updates, iteration.updates
            finished = env_steps >= group.budget_env_steps and iteration.at_boundary
            bar.update(iteration.env_steps)

            t0 = time.perf_counter()
            if crossed(env_steps, before, config.log_every_env_steps) or finished:
                agent_rows = group.train_rows()
                now = time.perf_counter()
                interval_s = max(now - t_row, 1e-9)
                updates_now = agent_rows[0]["updates"]
                timing = {"time/env_steps_per_s": (env_steps - steps_at_row) / interval_s,
                          "time/updates_per_s": (updates_now - updates_at_row) / interval_s,
                          "time/elapsed_s": now - t_start}
                for logger, agent_row, tracker in zip(loggers, agent_rows, episodes,
                                                      strict=True):
                    logger.write({"step": env_steps, **agent_row, **tracker.pop_row(), **timing})
                t_row, steps_at_row, updates_at_row = now, env_steps, updates_now
                postfix["updates/s"] = f"{timing['time/updates_per_s']:.1f}"
                bar.set_postfix(postfix)
            if every_probe and crossed(updates, updates_before, every_probe):
                for logger, row in zip(loggers, group.probe_rows(), strict=True):
                    logger.write({"step": env_steps, **row})
            seconds["logging"] += time.perf_counter() - t0

            phase_ended = sequential and crossed(env_steps, before, config.phase_env_steps())
            if crossed(env_steps, before, config.eval_every_env_steps) or finished or phase_ended:
                t0 = time.perf_counter()
                last_evals = group.evaluate()
                eval_seconds = time.perf_counter() - t0
                seconds["eval"] += eval_seconds
                phase_field = {"phase": phase} if sequential else {}
                masks_now = group.masks()
                for logger, row, masks, masks_before in zip(loggers, last_evals, masks_now,
                                                            measured, strict=True):
                    logger.write({"step": env_steps, **row, **phase_field,
                                  **masks_row(masks, masks_before, group.layer_slices),
                                  "time/eval_s": eval_seconds})
                measured = masks_now
                score = np.mean([row[group.score_name] for row in last_evals])
                postfix[group.score_name.removeprefix("eval/")] = f"{score:.2f}"
                bar.set_postfix(postfix)
                video_every = config.video_every_env_steps
                if video_every and crossed(env_steps, evaluated_at, video_every):
                    t0 = time.perf_counter()
                    for run_dir, logger, videos in zip(
                            run_dirs, loggers, group.record_videos(env_steps, 1), strict=True):
                        write_videos(run_dir, env_steps, videos,
                                     video_logger(logger, run_dir, env_steps))
                    seconds["eval"] += time.perf_counter() - t0
                evaluated_at = env_steps

            checkpoint_due |= crossed(env_steps, before, config.checkpoint_every_env_steps)
            preempted = stop.requested and iteration.at_boundary and not finished
            if (checkpoint_due and iteration.at_boundary) or finished or preempted:
                t0 = time.perf_counter()
                for checkpointer, (state, meta), tracker, last_eval, masks in zip(
                        checkpointers, group.checkpoint(), episodes, last_evals, measured,
                        strict=True):
                    checkpointer.save(env_steps, state, {
                        "env_steps": env_steps, "last_eval": last_eval,
                        "episodes": tracker.dump(),
                        MEASURED_MASKS: None if masks is None else pack_masks(masks), **meta})
                seconds["checkpoint"] += time.perf_counter() - t0
                checkpoint_due = False
            if finished:
                break
            if preempted:
                raise PreemptedError(
                    f"{stop.signal_name}: checkpointed at env step {env_steps} and stopped; "
                    f"{_intact(run_dirs)} (exit status {PreemptedError.exit_code}: requeue)")
    finally:
        bar.close()
        for logger in loggers:
            logger.close()
    for run_dir, last_eval in zip(run_dirs, last_evals, strict=True):
        write_finished(run_dir, env_steps, group.updates(), last_eval)
    seconds["total"] = time.perf_counter() - t_start
    return [run_result(d, env_steps, group.updates(), group.task_names, last_eval, seconds)
            for d, last_eval in zip(run_dirs, last_evals, strict=True)]


def video_logger(logger: MetricsLogger, run_dir: Path,
                 env_step: int) -> Callable[[str, Video], None]:
    """``on_video`` of ``write_videos`` that logs each task's video at ``env_step`` as
    ``video/<task>``: to TensorBoard as an image strip of its frames (``videos.frame_strip``),
    and its GIF to the W&B run when the run is tracked."""

    def log(task: str, video: Video) -> None:
        logger.add_video(env_step, f"video/{task}", frame_strip(video.frames),
                         video_dir(run_dir, env_step) / f"{task}.gif")

    return log


@contextlib.contextmanager
def restored_checkpoint(run_dir: Path, step: int | None = None):
    """The run of ``run_dir`` restored from its checkpoint at env step ``step`` (default: the
    latest), as ``(step, state, kind)``: the checkpoint's device state and the run's agent kind
    built from its stored config (closed on exit). ``RunDirError`` when there is no such
    checkpoint or it does not read back."""
    config = read_config(run_dir)
    checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR, config.keep_checkpoints,
                                read_run_id(run_dir))
    try:
        available = checkpointer.steps()
        if not available:
            raise RunDirError(f"{run_dir} holds no checkpoint")
        step = available[-1] if step is None else step
        if step not in available:
            raise RunDirError(f"no checkpoint at step {step} in {run_dir}; available: "
                              f"{', '.join(map(str, available))}")
        kind = AGENT_KINDS[config.AGENT](config)
        try:
            try:
                state, _ = checkpointer.restore(step, kind.abstract_state())
            except Exception as error:  # torn, corrupt or another run's
                raise RunDirError(f"the checkpoint at env step {step} in {run_dir} does not "
                                  f"read back ({error_summary(error)})") from None
            yield step, state, kind
        finally:
            kind.close()
    finally:
        checkpointer.close()


def evaluate_run(run_dir: Path, step: int | None = None, video_episodes: int = 0
                 ) -> tuple[int, RunResult, dict[str, Path]]:
    """Evaluate the checkpoint of ``run_dir`` at env step ``step`` (default: the latest) with the
    run's own evaluation settings and episodes; with ``video_episodes``, also record that many
    episodes per task as videos (``mtrl_sparse.videos``; check ``video_problem`` first).

    Writes ``eval/step_<N>.json`` (the step and the ``eval/...`` row) and the videos,
    ``videos/step_<N>/<task>.gif``, in the run directory; returns (step, result, task -> video
    path).
    """
    with restored_checkpoint(run_dir, step) as (step, state, kind):
        row = kind.evaluate_checkpoint(state, step)
        updates = kind.updates()
        videos = (write_videos(run_dir, step, kind.record_videos(step, video_episodes))
                  if video_episodes else {})
    out = run_dir / EVAL_DIR
    out.mkdir(exist_ok=True)
    (out / f"step_{step}.json").write_text(json.dumps({"step": step, **row}, indent=2))
    return step, run_result(run_dir, step, updates, kind.task_names, row), videos


__all__ = ["train", "evaluate_run", "RunResult", "NonFiniteLossError", "RunStopped",
           "AGENT_KINDS"]
