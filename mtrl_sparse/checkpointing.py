"""Orbax checkpoints of a run: the whole train state (agent, replay buffer, RNG) plus JSON metadata
(counters, environment RNG states, logging accumulators).

Saves are atomic (orbax writes to a temporary folder and renames it once complete, so a killed
save never leaves a checkpoint that looks complete) and rotate, keeping the last ``keep``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Checkpoints under ``directory``, named by the env step they were taken at."""

    def __init__(self, directory: Path, keep: int):
        self.directory = directory
        self._keep = keep
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory.absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=self._keep, enable_async_checkpointing=False, create=True
            ),
        )

    def save(self, env_step: int, state: Any, meta: dict[str, Any]) -> None:
        self._manager.save(
            env_step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, env_step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The state (structured like ``abstract_state``) and metadata saved at ``env_step``,
        on this process's default device, whatever devices saved it (a run of a vmapped group
        sharded over several devices resumes alone, and the other way round)."""
        restored = self._manager.restore(
            env_step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(on_default_device(abstract_state)),
                                    meta=ocp.args.JsonRestore()),
        )
        return restored.state, restored.meta

    def set_aside(self, env_step: int, reason: str) -> Path:
        """Move the checkpoint at ``env_step`` out of the run's sight, to ``<step>.<reason>``
        beside it (kept, not deleted: nothing committed is lost); returns its new path."""
        self._manager.close()
        target = self.directory / f"{env_step}.{reason}"
        (self.directory / str(env_step)).rename(target)
        self._manager = self._open()
        return target

    def close(self) -> None:
        self._manager.close()


def restore_latest_readable(checkpointers: list[Checkpointer], abstract_states: list[Any],
                            warn: Any) -> tuple[int, list[tuple[Any, dict[str, Any]]]]:
    """The latest env step at which every run's checkpoint reads back, and what each holds.

    A checkpoint that fails to read (a torn file, flipped bytes, missing metadata) is set aside
    as ``<step>.unreadable`` with one line through ``warn``, and the step before is tried; every
    run's checkpoints after the restored step are then set aside as ``<step>.superseded``, so
    that the runs save those steps again. Raises ``ValueError`` when no step reads back."""
    steps = sorted(set.intersection(*(set(c.steps()) for c in checkpointers)), reverse=True)
    failures = []
    for step in steps:
        saved = []
        for checkpointer, abstract in zip(checkpointers, abstract_states, strict=True):
            try:
                saved.append(checkpointer.restore(step, abstract))
            except Exception as error:  # orbax and json raise many kinds for a damaged one
                first_line = (str(error).strip().splitlines() or [""])[0][:200]
                failures.append(f"{step}: {type(error).__name__}: {first_line}")
                warn(f"the checkpoint at env step {step} does not read back "
                     f"({type(error).__name__}: {first_line}) in {checkpointer.directory}; "
                     "trying the one before")
                checkpointer.set_aside(step, "unreadable")
                break
        else:
            for checkpointer in checkpointers:
                for later in [s for s in checkpointer.steps() if s > step]:
                    checkpointer.set_aside(later, "superseded")
            return step, saved
    raise ValueError("no checkpoint reads back" + (f" ({'; '.join(failures)})" if failures
                                                    else ""))


def on_default_device(abstract_state: Any) -> Any:
    """``abstract_state`` (arrays or shape-dtype structs) as shape-dtype structs placed on the
    default device: the restore target that makes orbax ignore the devices recorded at save."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        abstract_state)


def has_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds at least one complete checkpoint (without creating anything)."""
    if not directory.is_dir():
        return False
    return any(p.is_dir() and p.name.isdigit() for p in directory.iterdir())
