"""Orbax checkpoints of a run: the whole train state (agent, replay buffer, RNG) plus JSON metadata
(counters, environment RNG states, logging accumulators).

Saves are atomic (orbax writes to a temporary folder and renames it once complete, so a killed
save never leaves a checkpoint that looks complete; the temporary folders of killed saves are
removed when the run reopens its checkpoints) and rotate, keeping the last ``keep``.

Each checkpoint's metadata carries an ``integrity`` record: the run's id (``config.json``'s
``run_id``), a CRC-32 of every byte of the state and one of the rest of the metadata. A restore
recomputes them, so a checkpoint with flipped bytes, or with the metadata of another run, is
refused (``CheckpointMismatch``) instead of resuming a silently wrong state.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mtrl_sparse.stops import error_summary, is_out_of_space, out_of_space_error

INTEGRITY_KEY = "integrity"
TMP_SUFFIX = ".orbax-checkpoint-tmp"
"""Orbax names a save in progress ``<step>.orbax-checkpoint-tmp-<n>`` until it commits it."""
COMMIT_MARKER = "commit_success.txt"
"""The file orbax writes into a checkpoint's folder when its save completed."""


class CheckpointMismatch(ValueError):
    """A checkpoint read back, but not as it was written (or it belongs to another run)."""


def state_crc32(state: Any) -> int:
    """CRC-32 of every byte of ``state``'s leaves, in tree order (PRNG keys by their data)."""
    leaves = [jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
              else x for x in jax.tree.leaves(state)]
    crc = 0
    for leaf in jax.device_get(leaves):
        crc = zlib.crc32(np.ascontiguousarray(leaf).reshape(-1).view(np.uint8), crc)
    return crc


def meta_crc32(meta: dict[str, Any]) -> int:
    """CRC-32 of ``meta`` as canonical JSON (sorted keys)."""
    return zlib.crc32(json.dumps(meta, sort_keys=True).encode())


class Checkpointer:
    """Checkpoints under ``directory``, named by the env step they were taken at."""

    def __init__(self, directory: Path, keep: int, run_id: str | None = None,
                 writer: bool = False):
        """``writer``: this process trains the run (it holds the run directory's lock), so the
        temporary folders of earlier, killed saves are its to remove; a reader (``eval``, a
        report) leaves them, since they may be a live run's save in progress."""
        self.directory = directory
        self.run_id = run_id
        """The run's id, written into every checkpoint and checked on restore (None: not
        checked; runs made before ids existed)."""
        self._keep = keep
        self._writer = writer
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        if self._writer:  # before orbax lists the steps; at once, not in orbax's background
            for partial in self.directory.glob(f"*{TMP_SUFFIX}*"):
                shutil.rmtree(partial, ignore_errors=True)
        return ocp.CheckpointManager(
            self.directory.absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=self._keep, enable_async_checkpointing=False, create=True,
            ),
        )

    def save(self, env_step: int, state: Any, meta: dict[str, Any]) -> None:
        """Save ``state`` and the JSON ``meta`` at ``env_step``, with the integrity record. A
        save that fails (a full disk) leaves no partial folder behind and raises."""
        integrity = {"run_id": self.run_id, "state_crc32": state_crc32(state),
                     "meta_crc32": meta_crc32(meta)}
        try:
            self._manager.save(
                env_step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave({**meta,
                                                                INTEGRITY_KEY: integrity})),
                force=True,
            )
            self._manager.wait_until_finished()
        except BaseException as error:
            for partial in self.directory.glob(f"{env_step}{TMP_SUFFIX}*"):
                shutil.rmtree(partial, ignore_errors=True)
            if is_out_of_space(error):
                raise out_of_space_error(f"the checkpoint at env step {env_step}",
                                         self.directory, self._size_estimate(state)) from None
            raise

    def _size_estimate(self, state: Any) -> int:
        """Bytes a checkpoint takes: the latest one's on disk, or the state's array bytes."""
        steps = self.steps()
        if steps:
            folder = self.directory / str(steps[-1])
            return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        return sum(x.nbytes for x in jax.tree.leaves(state))

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, env_step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The state (structured like ``abstract_state``) and metadata saved at ``env_step``,
        on this process's default device, whatever devices saved it (a run of a vmapped group
        sharded over several devices resumes alone, and the other way round)."""
        if not (self.directory / str(env_step) / COMMIT_MARKER).is_file():
            raise CheckpointMismatch(f"its commit marker ({COMMIT_MARKER}) is missing: the save "
                                     "did not complete")
        restored = self._manager.restore(
            env_step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(on_default_device(abstract_state)),
                                    meta=ocp.args.JsonRestore()),
        )
        meta = dict(restored.meta)
        self._check_integrity(meta.pop(INTEGRITY_KEY, None), restored.state, meta)
        return restored.state, meta

    def _check_integrity(self, integrity: dict[str, Any] | None, state: Any,
                         meta: dict[str, Any]) -> None:
        """``CheckpointMismatch`` unless the restored ``state`` and ``meta`` are what was saved,
        by this run (checkpoints saved before the record existed are not checked)."""
        if integrity is None:
            return
        if self.run_id and integrity.get("run_id") and integrity["run_id"] != self.run_id:
            raise CheckpointMismatch(f"it belongs to another run (run id {integrity['run_id']}, "
                                     f"this run's is {self.run_id})")
        if meta_crc32(meta) != integrity["meta_crc32"]:
            raise CheckpointMismatch("its metadata differs from what was saved (CRC-32)")
        if state_crc32(state) != integrity["state_crc32"]:
            raise CheckpointMismatch("its state differs from what was saved (CRC-32)")

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
                failures.append(f"{step}: {error_summary(error)}")
                warn(f"the checkpoint at env step {step} does not read back "
                     f"({error_summary(error)}) in {checkpointer.directory}; "
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
