"""Why a run stops before its budget, and the preemption signals that ask it to.

Every stop leaves the run's last checkpoint and the rows logged up to it intact, so
``train --resume`` (or ``--auto-resume``) continues the run to the numbers it would have had.
Each kind of stop is one exception carrying the exit status the command ends with:

============================  ====  =============================================================
``NonFiniteLossError``        1     a loss, an action, an observation or a reward became NaN/Inf
``EnvFailedError``            1     an environment raised or its worker process died
``OutOfSpaceError``           74    the disk filled while writing a checkpoint or a metrics row
                                    (``EX_IOERR``); resume once space is back
``PreemptedError``            75    SIGTERM or SIGUSR1 (what SLURM and cloud schedulers send
                                    before a SIGKILL): the run checkpointed at its next safe point
                                    and asks to be requeued (``EX_TEMPFAIL``)
============================  ====  =============================================================
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class RunStopped(RuntimeError):
    """A run stopped before its budget; its last checkpoint is intact."""

    exit_code = 1


class NonFiniteLossError(RunStopped):
    """A loss, an action, an observation or a reward became NaN or Inf; the message names the
    network or task, the quantity and the env step."""


class EnvFailedError(RunStopped):
    """An environment raised, or its worker process died; the message names the env and task."""


class OutOfSpaceError(RunStopped):
    """The disk filled while the run wrote; the message names the path and the space needed."""

    exit_code = 74


class PreemptedError(RunStopped):
    """A preemption signal stopped the run after a checkpoint at its next safe point."""

    exit_code = 75


REQUEUE_EXIT = PreemptedError.exit_code
"""The exit status of a preempted run or sweep: requeue me (``EX_TEMPFAIL``)."""

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""SIGTERM (SLURM's and Kubernetes' preemption notice), SIGUSR1 (``sbatch --signal=USR1@T``)."""


@dataclass
class StopRequest:
    """Set by a preemption signal; the run loop reads it after every iteration."""

    signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


@contextlib.contextmanager
def catch_preemption() -> Iterator[StopRequest]:
    """For the block, a preemption signal sets the yielded ``StopRequest`` instead of ending the
    process. Later signals change nothing: a scheduler may signal every process of a job and a
    sweep forwards the signal to its workers, so a worker can receive it twice; the scheduler's
    SIGKILL after its grace period is the hard stop (and SIGINT, Ctrl-C, still interrupts).
    Outside the main thread (where Python cannot install handlers) nothing is caught."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame: object) -> None:
        del frame
        request.signal_name = request.signal_name or signal.Signals(signum).name

    previous = {s: signal.getsignal(s) for s in PREEMPTION_SIGNALS}
    for s in PREEMPTION_SIGNALS:
        signal.signal(s, handle)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def is_out_of_space(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is a full disk or an exceeded quota;
    libraries that write through C++ (orbax's TensorStore) report it in their message only."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def error_summary(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters): an error in one line."""
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {first_line}"


def out_of_space_error(what: str, path: Path, needed_bytes: int) -> OutOfSpaceError:
    """The ``OutOfSpaceError`` of a write of ``what`` to ``path`` that filled the disk, naming
    the path, about the space the write needs and the space free."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = f"{_mib(shutil.disk_usage(existing).free)} free"
    except OSError:
        free = "free space unknown"
    return OutOfSpaceError(f"no space left on device writing {what} to {path} (about "
                           f"{_mib(needed_bytes)} needed, {free})")


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
