"""Fault injection for the cluster tests: SIGKILLs at random moments and inside checkpoint writes.

``python -m support.faults ARGS...`` runs ``mtrl-sparse ARGS...`` in a process that SIGKILLs
itself inside a checkpoint write when ``KILL_IN_SAVE`` says so: ``<point>:<when>``, where
``point`` is where in orbax's save the kill lands (``meta``: the save's temporary folder exists,
nothing is written; ``state``: the metadata is written, the arrays not; ``finalize``: every item
is written, the folder is not yet committed) and ``when`` which save (``first``: the process's
first; ``final``: the save at or after ``FINAL_STEP`` env steps, the run's last).

``kill_repeatedly`` launches a command again and again, each launch killed once (at a random
moment, or inside a checkpoint write), then lets it finish; it reports where the kills landed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

KILL_IN_SAVE = "MTRL_TEST_KILL_IN_SAVE"
FINAL_STEP = "MTRL_TEST_FINAL_STEP"
SAVE_POINTS = ("meta", "state", "finalize")
TESTS_DIR = Path(__file__).resolve().parents[1]


def _arm_kill_in_save(spec: str) -> None:
    """Patch orbax so that the save ``spec`` names SIGKILLs this process at its point."""
    from orbax.checkpoint import handlers

    from mtrl_sparse.checkpointing import Checkpointer

    point, when = spec.split(":")
    final_step = int(os.environ.get(FINAL_STEP, "0"))
    armed = {"now": False}
    save = Checkpointer.save

    def counting_save(self, env_step, state, meta):
        armed["now"] = when == "first" or (when == "final" and env_step >= final_step)
        return save(self, env_step, state, meta)

    def kill_at(cls, name: str, after: bool) -> None:
        original = getattr(cls, name)

        def patched(*args, **kwargs):
            if armed["now"] and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            if armed["now"] and after:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(cls, name, patched)

    Checkpointer.save = counting_save
    if point == "meta":
        kill_at(handlers.JsonCheckpointHandler, "async_save", after=False)
    elif point == "state":
        kill_at(handlers.StandardCheckpointHandler, "async_save", after=False)
    else:
        kill_at(handlers.StandardCheckpointHandler, "finalize", after=True)


@dataclass
class KillLog:
    """Where the kills of ``kill_repeatedly`` landed."""

    kills: int = 0
    inside_checkpoint_write: int = 0
    """Kills that left a checkpoint's temporary folder behind (killed mid-write)."""
    before_first_checkpoint: int = 0
    at_random_moments: int = 0
    exit_codes: list[int] = field(default_factory=list)


def partial_checkpoints(run_dirs: list[Path]) -> bool:
    return any(any(d.glob("checkpoints/*.orbax-checkpoint-tmp*")) for d in run_dirs)


def committed(run_dirs: list[Path]) -> bool:
    return all(any(p.name.isdigit() for p in (d / "checkpoints").glob("*")) for d in run_dirs)


def kill_repeatedly(command: list[str], run_dirs: Callable[[], list[Path]], kills: int,
                    seed: int, final_step: int, moment_s: float) -> KillLog:
    """Launch ``command`` (mtrl-sparse arguments that start or continue the run, e.g. with
    ``--auto-resume``) ``kills`` times, killing each launch once: every other launch at a random
    moment in ``(0, moment_s)`` seconds after it starts (if it reaches its last save first, it
    dies there), the others inside their first checkpoint write at a random point. Then launch it
    once more, unharmed, to the end. ``run_dirs()`` gives the run directories written (for the
    log)."""
    rng = random.Random(seed)
    log = KillLog()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR),
                                                        os.environ.get("PYTHONPATH", "")]),
           FINAL_STEP: str(final_step)}
    for attempt in range(kills):
        at_moment = attempt % 2 == 0
        point = rng.choice(SAVE_POINTS)
        fault = f"{point}:final" if at_moment else f"{point}:first"
        process = subprocess.Popen([sys.executable, "-m", "support.faults", *command],
                                   env={**env, KILL_IN_SAVE: fault},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if at_moment:
            deadline = time.monotonic() + rng.uniform(0.05, moment_s)
            while time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.01)
            if process.poll() is None:
                dirs = run_dirs()
                before = not dirs or not committed(dirs)
                process.send_signal(signal.SIGKILL)
                log.at_random_moments += 1
                log.before_first_checkpoint += before
        process.wait(timeout=600)
        _, stderr = process.communicate()
        log.exit_codes.append(process.returncode)
        if process.returncode != -signal.SIGKILL:
            raise AssertionError(f"launch {attempt} ({fault}) was not killed: exit "
                                 f"{process.returncode}: {stderr.decode()[-2000:]}")
        log.kills += 1
        dirs = run_dirs()
        log.inside_checkpoint_write += partial_checkpoints(dirs)
        if not at_moment and not partial_checkpoints(dirs):
            raise AssertionError(f"launch {attempt} ({fault}) died outside a checkpoint write")
    finished = subprocess.run([sys.executable, "-m", "mtrl_sparse.cli", *command], env=env,
                              capture_output=True, timeout=600)
    if finished.returncode != 0:
        raise AssertionError(f"the last launch failed: {finished.stderr.decode()[-2000:]}")
    if partial_checkpoints(run_dirs()):
        raise AssertionError("a killed save's temporary folder outlived the run")
    return log


if __name__ == "__main__":
    if os.environ.get(KILL_IN_SAVE):
        _arm_kill_in_save(os.environ[KILL_IN_SAVE])
    from mtrl_sparse.cli import main

    sys.exit(main(sys.argv[1:]))
