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
        self._manager = ocp.CheckpointManager(
            directory.absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, create=True
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

    def close(self) -> None:
        self._manager.close()


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
