"""Reading an offline W&B run back from its transaction log, ``offline-run-*/run-<id>.wandb``.

The wandb package writes that log but no longer ships a reader of it (``wandb sync`` reads it in
its Go core), so this one follows the format: a 7-byte header (``:W&B``, magic 0xBEE1, version
0), then LevelDB's log format: 32 KiB blocks of chunks, each with a 7-byte header (CRC-32 of the
chunk type and data, length, type: full, first, middle or last piece of a record), a block's
tail shorter than a header zero-filled. Every record is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32768
CHUNK_HEADER = struct.Struct("<IHB")  # CRC-32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    """Every record (a ``wandb_internal_pb2.Record``) of the transaction log at ``path``, each
    chunk's CRC checked."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data.startswith(FILE_HEADER), f"{path} is not a W&B transaction log"
    found, pieces, pos = [], [], len(FILE_HEADER)
    while pos + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER.size:  # the zero-filled tail of a block
            pos += left_in_block
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        chunk = data[pos + CHUNK_HEADER.size:pos + CHUNK_HEADER.size + length]
        pos += CHUNK_HEADER.size + length
        if kind == 0:  # zero padding at the end of the file
            break
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad CRC at {pos}"
        pieces.append(chunk)
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(pieces))
            found.append(record)
            pieces = []
    return found


@dataclass
class OfflineRun:
    """What an offline run recorded: its id, display name, group, tags, config and history
    rows (each a dict with W&B's ``_step``), and the exit code it finished with."""

    run_id: str
    name: str
    group: str
    tags: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None


def _item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(path: Path) -> OfflineRun:
    """The run recorded in the transaction log at ``path``."""
    run: OfflineRun | None = None
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info = record.run
            run = OfflineRun(info.run_id, info.display_name, info.run_group, list(info.tags),
                             {_item_key(i): json.loads(i.value_json) for i in info.config.update})
        elif kind == "config" and run is not None:
            run.config.update({_item_key(i): json.loads(i.value_json)
                               for i in record.config.update})
        elif kind == "history" and run is not None:
            run.history.append({_item_key(i): json.loads(i.value_json)
                                for i in record.history.item})
        elif kind == "exit" and run is not None:
            run.exit_code = record.exit.exit_code
    assert run is not None, f"{path} holds no run record"
    return run


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under ``wandb_dir`` (W&B's ``wandb/`` folder), oldest first."""
    logs = sorted(wandb_dir.glob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    return [read_offline_run(path) for path in logs]
