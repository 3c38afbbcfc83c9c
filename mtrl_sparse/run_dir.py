"""The run directory: its layout, the stored config with provenance, and the metrics writers.

Layout::

    <run_dir>/config.json     resolved config, the run's id (its checkpoints carry it) and
                              provenance (versions, git commit, device)
    <run_dir>/metrics.jsonl   one JSON object per line, always with "step" in env steps
    <run_dir>/tb/             TensorBoard event files (same scalars as metrics.jsonl)
    <run_dir>/checkpoints/    orbax checkpoints, one folder per env step
    <run_dir>/eval/           results of `mtrl-sparse eval`
    <run_dir>/videos/         GIFs of the evaluation policy, step_<S>/<task>.gif (`eval --video`,
                              `train --video-every-env-steps`; mtrl_sparse.videos)
    <run_dir>/finished.json   written when the run reaches its budget: env steps, updates, the
                              final evaluation row (absent while the run is unfinished)
    <run_dir>/wandb_id        tracked runs (``--track``): the id of the run's W&B run, which a
                              resumed run continues (``mtrl_sparse.tracking``)
    <run_dir>/wandb/          tracked runs: W&B's local files, offline runs included (unless
                              ``WANDB_DIR`` puts them elsewhere)

Fields whose name starts with ``time/`` are wall-clock measurements; everything else in
``metrics.jsonl`` is a deterministic function of the config and seed.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import platform
import shutil
import subprocess
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from tensorboardX import SummaryWriter

from mtrl_sparse.agents.net_state import NetState
from mtrl_sparse.agents.tree_paths import path_str
from mtrl_sparse.config import CONFIG_CLASSES, RunConfig, config_class, from_dict, to_dict
from mtrl_sparse.precision import matmul_precision
from mtrl_sparse.stops import is_out_of_space, out_of_space_error

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
CHECKPOINT_DIR = "checkpoints"
EVAL_DIR = "eval"
VIDEO_DIR = "videos"
FINISHED_FILE = "finished.json"
WANDB_ID_FILE = "wandb_id"


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (a usage error)."""


def check_new_run_dir(path: Path) -> None:
    """Raise ``RunDirError`` unless ``path`` can hold a new run (absent or empty, writable)."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run dir {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise RunDirError(
            f"run dir {path} is already used; pass --resume to continue it or choose a new one"
        )
    parent = path if path.exists() else _nearest_existing_parent(path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"run dir {path} is not writable ({parent} denies writing)")


def _nearest_existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def read_config(run_dir: Path) -> RunConfig:
    """The config stored in a run directory, as its agent's config class with the options of the
    methods registered now (``config_class``; options of a method no longer registered are
    dropped)."""
    stored = _read_config_file(run_dir)
    agent = stored.get("agent", "sac")
    if agent not in CONFIG_CLASSES:
        raise RunDirError(f"{run_dir} holds a run of agent {agent!r}; this version knows "
                          f"{', '.join(CONFIG_CLASSES)}")
    unknown: list[str] = []
    try:
        config = from_dict(stored["config"], config_class(CONFIG_CLASSES[agent]), unknown)
    except (TypeError, ValueError) as error:
        raise RunDirError(f"{run_dir / CONFIG_FILE}: {error} (edited by hand, or written by "
                          "another version?)") from None
    if unknown:
        raise RunDirError(f"{run_dir / CONFIG_FILE} holds fields this version does not know: "
                          f"{', '.join(unknown)} (edited by hand, or written by another "
                          "version?)")
    return config


def _read_config_file(run_dir: Path) -> dict[str, Any]:
    """``config.json`` as a dict with a ``config`` object; ``RunDirError`` otherwise."""
    path = run_dir / CONFIG_FILE
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{run_dir} holds no run ({CONFIG_FILE} missing)") from None
    except (OSError, ValueError) as error:
        raise RunDirError(f"{path} does not read as JSON ({error})") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
        raise RunDirError(f"{path} holds no run config (expected an object with 'agent' and "
                          "'config')")
    return stored


def read_run_id(run_dir: Path) -> str | None:
    """The run's id from ``config.json`` (None: no config yet, or a run made before ids); its
    checkpoints carry it, so a checkpoint copied from another run is refused."""
    try:
        return json.loads((run_dir / CONFIG_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def try_flock(path: Path, create: bool = False) -> int | None:
    """An open descriptor of ``path`` (a directory, or a lock file made with ``create``) holding
    an exclusive lock on it for as long as it stays open (the lock goes with the process,
    however it ends), or None when another live process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if create else os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_run_dir(run_dir: Path) -> int:
    """``try_flock`` of ``run_dir``; ``RunDirError`` when another live process holds it, so two
    commands never write one run."""
    fd = try_flock(run_dir)
    if fd is None:
        raise RunDirError(f"run dir {run_dir} is in use by another live process (a train or a "
                          "sweep worker); wait for it to end, or give another --run-dir")
    return fd


def read_preset(run_dir: Path) -> str | None:
    """The preset a run directory's config started from (None if it was built in Python)."""
    return _read_config_file(run_dir).get("preset")


def write_config(run_dir: Path, config: RunConfig, preset: str | None) -> None:
    """Write ``config.json`` atomically: the agent, the resolved config, the preset it started
    from, the run's id (kept when the file is rewritten on resume; new otherwise) and the run's
    provenance."""
    run_id = read_run_id(run_dir) or uuid.uuid4().hex
    payload = {"agent": config.AGENT, "config": to_dict(config), "preset": preset,
               "run_id": run_id, "provenance": provenance()}
    tmp = run_dir / (CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, run_dir / CONFIG_FILE)


def provenance() -> dict[str, Any]:
    """Versions of the packages that decide the numbers, the git commit and the device."""
    versions = {}
    for package in ("mtrl-sparse", "jax", "jaxlib", "flax", "optax", "metaworld", "mujoco",
                    "gymnasium", "orbax-checkpoint"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    device = jax.devices()[0]
    return {
        "versions": versions,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "device": {"platform": device.platform, "kind": device.device_kind,
                   "count": jax.device_count(), "matmul_precision": matmul_precision()},
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_finished(run_dir: Path, env_steps: int, updates: int,
                   last_eval: dict[str, Any] | None) -> None:
    """Mark the run finished: ``finished.json`` with its env steps, updates and final
    evaluation row (written last, atomically, so its presence means the run is complete)."""
    tmp = run_dir / f".{FINISHED_FILE}.tmp"
    tmp.write_text(json.dumps({"env_steps": env_steps, "updates": updates,
                               "last_eval": last_eval}, default=float) + "\n")
    os.replace(tmp, run_dir / FINISHED_FILE)


def read_finished(run_dir: Path) -> dict[str, Any] | None:
    """The content of ``finished.json`` (None while the run is unfinished)."""
    path = run_dir / FINISHED_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every row of ``metrics.jsonl`` (a torn last line, from a killed writer, is skipped)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def clear_uncommitted(run_dir: Path) -> None:
    """Remove what a run wrote before its first checkpoint (metrics, TensorBoard events,
    evaluations, a partial checkpoint), keeping its config: it starts afresh."""
    for name in (METRICS_FILE, FINISHED_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for name in (TB_DIR, EVAL_DIR, CHECKPOINT_DIR):
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop rows logged after env step ``last_step`` (work lost with a killed process)."""
    rows = [r for r in read_metrics(run_dir) if r["step"] <= last_step]
    tmp = run_dir / (METRICS_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, run_dir / METRICS_FILE)


def scalars_of(row: dict[str, Any], labels: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """The scalars of a metrics row as TensorBoard and W&B name them: every field but ``step``;
    an array (a list) as one scalar per entry, ``name/<label>`` with the ``labels`` given for
    that name or for its last part (e.g. task names; else its indices); a single value only
    when it is a finite number (None, an unmeasured statistic, is left out)."""
    scalars: dict[str, Any] = {}
    for name, value in row.items():
        if name == "step":
            continue
        if isinstance(value, list):
            names = labels.get(name, labels.get(name.rsplit("/", 1)[-1],
                                                tuple(str(i) for i in range(len(value)))))
            for label, item in zip(names, value, strict=False):
                scalars[f"{name}/{label}"] = item
        elif isinstance(value, int | float) and math.isfinite(value):
            scalars[name] = value
    return scalars


class RowMirror(Protocol):
    """Where a run's rows and videos go besides its directory, e.g. a W&B run."""

    def log(self, scalars: dict[str, Any], step: int) -> None:
        """The scalars of a row (``scalars_of``) at its env step."""

    def log_video(self, tag: str, path: Path, step: int) -> None:
        """A video file (a GIF) under ``tag`` at env step ``step``."""


class MetricsLogger:
    """Appends rows to ``metrics.jsonl`` (flushed per row) and mirrors their scalars
    (``scalars_of``) to TensorBoard and to ``mirror`` when one is given (W&B tracking)."""

    def __init__(self, run_dir: Path, labels: dict[str, tuple[str, ...]], purge_step: int | None,
                 mirror: RowMirror | None = None):
        self._path = run_dir / METRICS_FILE
        self._jsonl = open(self._path, "a", buffering=1)  # noqa: SIM115
        self._tb = SummaryWriter(str(run_dir / TB_DIR), purge_step=purge_step)
        self._labels = labels
        self._mirror = mirror

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row``; ``OutOfSpaceError`` when the disk is full (the rows before stay)."""
        step = int(row["step"])
        line = json.dumps(row) + "\n"
        try:
            self._jsonl.write(line)
        except OSError as error:
            if not is_out_of_space(error):
                raise
            raise out_of_space_error("a metrics row", self._path, len(line)) from None
        scalars = scalars_of(row, self._labels)
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)
        if self._mirror is not None:
            self._mirror.log(scalars, step)

    def add_video(self, step: int, tag: str, strip: np.ndarray, path: Path) -> None:
        """A video (not a metrics row) under ``tag``: in TensorBoard as the image ``strip``
        (H, W, 3) uint8 of a few of its frames, and its file ``path`` to the mirror."""
        self._tb.add_image(tag, strip, step, dataformats="HWC")
        if self._mirror is not None:
            self._mirror.log_video(tag, path, step)

    def close(self) -> None:
        try:
            self._jsonl.close()
        except OSError as error:  # the unwritten rest of a row that filled the disk
            if not is_out_of_space(error):
                raise
        self._tb.close()


def method_state_row(networks: dict[str, NetState]) -> dict[str, Any]:
    """Scalar leaves of each network's method state, as ``<network>/<method>/<name>`` (only
    those leave the device: a method may keep parameter-sized arrays there)."""
    row = {}
    for network, net in networks.items():
        flat = jax.tree_util.tree_flatten_with_path(net.method_state)[0]
        scalars = [(path, value) for path, value in flat if np.ndim(value) == 0]
        values = jax.device_get([value for _, value in scalars])
        for (path, _), value in zip(scalars, values, strict=True):
            row[f"{network}/{path_str(path)}"] = np.asarray(value).item()
    return row


def crossed(now: int, before: int, interval: int) -> bool:
    """Whether a counter going from ``before`` to ``now`` passed a multiple of ``interval``."""
    return now // interval > before // interval


def scalar_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics fetched from the device as JSON values: floats, or lists for arrays."""
    row: dict[str, Any] = {}
    for name, value in jax.device_get(metrics).items():
        value = np.asarray(value)
        row[name] = value.tolist() if value.ndim else float(value)
    return row
