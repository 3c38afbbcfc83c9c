"""Sweeps: a grid of methods x sparsities x seeds on one preset, run as vmapped groups.

A sweep is the ``train`` arguments of its cells: each run is ``mtrl-sparse train --preset P
[train flags] --method M [--sparsity S] --seed N --run-dir OUT/<cell>/seed<N>``, so each run
directory is an ordinary one (``report``, ``eval`` and ``train --resume`` read it) and equals the
same run executed alone. Methods without a sparsity member (dense, and plasticity methods on a
dense network: reset, redo, weight_decay, layernorm) take no sparsity: they form one cell
(``<method>``); every method with a sparsity member (gmp, set, rigl, static, and combinations such
as ``gmp+redo``) forms one cell per sparsity (``<method>-sparsity<S>``). A sweep of a
sequential-schedule preset also trains, per seed, the single-task reference run of every task
(cell ``reference-<task>``: the dense agent on that task alone for one phase's env steps), from
which ``report`` computes Continual World's forward transfer; ``--no-references`` leaves them out.

Layout of ``--out``::

    <out>/sweep.json             the grid (preset, methods, sparsities, seeds, train flags) and
                                 its runs; a later command on the same --out must give the same grid
    <out>/<cell>/seed<N>/        one run directory per run (reference runs: reference-<task>)
    <out>/logs/<group>.log       the output of the worker process of each group (its last attempt)

Execution: the unfinished runs are planned into groups of at most ``group_size`` runs of one
method (different seeds and sparsities: one vmapped program, ``run_loop.train_group``); each
group runs in a worker process (``python -m mtrl_sparse.sweep OUT RUN...``), in a local process
pool or as Ray tasks. On a CPU the local pool has one worker per core, each pinned to its core, and
the groups are made small enough that every worker gets one (8 MiniGrid runs on 2 cores: two
pinned groups of 4 took 2.32x less time than the runs one after another, one group of 8 split over
both cores 1.77x, one pinned run per core 1.50x; ``bench/sweep_throughput.py``).

A finished run (``finished.json``) is skipped; a run with a checkpoint resumes from it (runs of a
group resume together, so the plan groups them by checkpoint step); a run that started but wrote
no checkpoint starts again. So the same command resumes a killed sweep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtrl_sparse.checkpointing import has_checkpoint
from mtrl_sparse.config import ConfigError, RunConfig, validate
from mtrl_sparse.host_memory import reuse_freed_memory
from mtrl_sparse.methods.base import MethodError
from mtrl_sparse.methods.registry import method_members
from mtrl_sparse.precision import use_training_precision
from mtrl_sparse.presets import PRESETS
from mtrl_sparse.run_dir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    read_finished,
    read_metrics,
    try_flock,
)
from mtrl_sparse.stops import REQUEUE_EXIT, RunStopped, StopRequest, catch_preemption
from mtrl_sparse.train_args import UsageError, checked_seeds, parse_seeds, parse_train_args

MANIFEST_FILE = "sweep.json"
LOG_DIR = "logs"
LOCK_DIR = "locks"
"""Under ``LOG_DIR``: one lock file per run, held by the worker that trains it (never deleted)."""
SWEEP_LOCK = "sweep"
"""The lock (``logs/locks/sweep.lock``) the sweep command holds on its ``--out``."""
REFERENCE_CELL = "reference"
"""Cell name prefix of the single-task reference runs: ``reference-<task>/seed<N>``."""
REFERENCE_METHOD = "dense"
"""The method of the reference runs (Continual World's: the plain agent on the task alone)."""
RESERVED_FLAGS = ("--preset", "--method", "--sparsity", "--seed", "--seeds", "--run-dir",
                  "--resume", "--progress", "--no-progress", "--wandb.name")
"""Train flags a sweep sets itself for each run."""


@dataclass(frozen=True)
class SweepSpec:
    """The grid of a sweep: what ``sweep.json`` stores and a resumed sweep must repeat."""

    preset: str
    methods: tuple[str, ...]
    sparsities: tuple[float, ...]
    seeds: tuple[int, ...]
    train_args: tuple[str, ...] = ()
    references: bool = True
    """Under a sequential schedule, also train every task's single-task reference run (per
    seed), from which ``report`` computes the forward transfer; ignored under the multi-task
    schedule."""


@dataclass(frozen=True)
class SweepRun:
    """One run of the grid: ``name`` is its run directory relative to the sweep's ``--out``."""

    method: str
    sparsity: float | None
    seed: int
    task: str | None = None
    """Set for a single-task reference run of this task (``reference_flags``)."""

    @property
    def cell(self) -> str:
        if self.task is not None:
            return f"{REFERENCE_CELL}-{self.task}"
        return self.method if self.sparsity is None else f"{self.method}-sparsity{self.sparsity:g}"

    @property
    def name(self) -> str:
        return f"{self.cell}/seed{self.seed}"


# --- the grid -----------------------------------------------------------------------------------

def takes_sparsity(method: str) -> bool:
    """Whether ``method`` (``a+b``) has a sparsity member (``UsageError`` if unknown)."""
    try:
        return any(entry.kind == "sparsity" for entry in method_members(method))
    except MethodError as error:
        raise UsageError(str(error)) from None


def expand_grid(spec: SweepSpec) -> list[SweepRun]:
    """The runs of ``spec``, cell by cell in the order of ``spec.methods`` then sparsities, seeds
    innermost; then, for a sequential schedule with ``spec.references``, one dense single-task
    reference run per task (in the schedule's order) and seed."""
    runs = []
    for method in spec.methods:
        levels: Sequence[float | None] = spec.sparsities if takes_sparsity(method) else (None,)
        runs.extend(SweepRun(method, level, seed) for level in levels for seed in spec.seeds)
    config = grid_config(spec)
    if spec.references and config.schedule == "sequential":
        runs.extend(SweepRun(REFERENCE_METHOD, None, seed, task)
                    for task in config.task_names() for seed in spec.seeds)
    return runs


def grid_config(spec: SweepSpec) -> RunConfig:
    """The config of the preset with the sweep's train flags (what every run shares)."""
    config, _, _ = parse_train_args(["--preset", spec.preset, *spec.train_args])
    return config


def reference_flags(config: RunConfig, task: str) -> list[str]:
    """``train`` flags turning a run of sequential ``config`` into the single-task reference run
    of ``task``: that task alone (Meta-World: as MT1), one phase's env steps, multi-task
    schedule (and its replay, whatever the sweep's ``--replay``); same network, agent and
    evaluation cadence. Continual World's forward transfer
    (Wolczyk et al. 2021) compares task ``i``'s curve within its phase with this run's."""
    benchmark = ["--env.benchmark", "MT1"] if config.AGENT == "sac" else []
    return [*benchmark, "--env.task", task, "--schedule", "multitask", "--replay", "current",
            "--total-env-steps", str(config.phase_env_steps())]


def parse_list(text: str, what: str) -> tuple[str, ...]:
    """A comma-separated list of non-empty, distinct items."""
    items = tuple(item.strip() for item in text.split(","))
    if not all(items) or len(set(items)) != len(items):
        raise UsageError(f"{what} {text!r}: expected a comma-separated list of distinct values")
    return items


def parse_sparsities(values: Sequence[Any]) -> tuple[float, ...]:
    """Target sparsities, each in (0, 1)."""
    try:
        levels = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        levels = ()
    if not levels or any(not 0.0 < s < 1.0 for s in levels) or len(set(levels)) != len(levels):
        raise UsageError(f"--sparsity {','.join(map(str, values))}: expected distinct target "
                         "sparsities in (0, 1), e.g. 0.8,0.95,0.99")
    return levels


def parse_sweep_seeds(value: Any) -> tuple[int, ...]:
    """Seeds: a count N (seeds 0..N-1), a range A-B, a list A,B,C, or a TOML list."""
    if isinstance(value, list):  # a list holds seeds, never a count: [3] is seed 3
        text = ",".join(map(str, value))
        try:
            return tuple(checked_seeds([int(seed) for seed in text.split(",")], text))
        except ValueError:
            return tuple(checked_seeds([], text))
    return tuple(parse_seeds(str(value)))


def check_spec(spec: SweepSpec) -> None:
    """Usage errors of a grid, before anything is written: unknown preset or method, a sparse
    method without sparsities, flags the sweep sets itself; then every cell's ``train``
    arguments parse into a valid config."""
    if spec.preset not in PRESETS:
        raise UsageError(f"unknown preset {spec.preset!r}; accepted: {', '.join(PRESETS)}")
    sparse = [m for m in spec.methods if takes_sparsity(m)]
    if sparse and not spec.sparsities:
        raise UsageError(f"{', '.join(sparse)} need --sparsity (target sparsities in (0, 1))")
    for arg in spec.train_args:
        if arg.partition("=")[0] in RESERVED_FLAGS:
            raise UsageError(f"{arg.partition('=')[0]} is set by the sweep for each run; "
                             "give the grid with --method, --sparsity and --seeds")
    cells = {run.cell: run for run in expand_grid(spec)}
    for run in cells.values():
        config, _, _ = parse_train_args(train_arguments(spec, run, Path("unused")))
        try:
            validate(config)
        except ConfigError as error:
            raise UsageError(f"{run.cell}: {error}") from None


def train_arguments(spec: SweepSpec, run: SweepRun, out: Path) -> list[str]:
    """The ``mtrl-sparse train`` arguments of ``run``."""
    sparsity = [] if run.sparsity is None else ["--sparsity", f"{run.sparsity:g}"]
    config = grid_config(spec)
    reference = [] if run.task is None else reference_flags(config, run.task)
    return ["--preset", spec.preset, *spec.train_args, *reference, "--method", run.method,
            *sparsity, "--seed", str(run.seed), "--run-dir", str(out / run.name),
            "--no-progress", *tracking_flags(config, run, out)]


def tracking_flags(config: RunConfig, run: SweepRun, out: Path) -> list[str]:
    """A tracked sweep's W&B flags of ``run``: its group, the sweep (the name of its directory
    ``out``, unless the train flags give ``--wandb.group``), and its name, ``<cell>-seed<N>``
    (e.g. ``gmp-sparsity0.95-seed3``); none when ``config``, the grid's, is not tracked."""
    if not config.wandb.enabled():
        return []
    group = [] if config.wandb.group else ["--wandb.group", out.resolve().name]
    return [*group, "--wandb.name", f"{run.cell}-seed{run.seed}"]


def spec_from_toml(path: Path) -> tuple[SweepSpec, dict[str, Any]]:
    """A grid from a TOML file: ``preset``, ``methods`` (list), ``sparsities`` (list),
    ``seeds`` (a count, a list or "A-B"), optional ``train_args`` (list of train flags); the
    other keys (``out``, ``group_size``, ``backend``, ``address``, ``workers``) are returned as
    execution options. ``UsageError`` naming the problem otherwise."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise UsageError(f"--file {path}: cannot read it ({error.strerror or error})") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"--file {path}: not valid TOML ({error})") from None
    grid_keys = {"preset", "methods", "sparsities", "seeds", "train_args", "references"}
    options = {"out", "group_size", "backend", "address", "workers"}
    unknown = set(data) - grid_keys - options
    if unknown:
        raise UsageError(f"--file {path}: unknown keys {', '.join(sorted(unknown))}; accepted: "
                         f"{', '.join(sorted(grid_keys | options))}")
    for key in ("preset", "methods", "seeds"):
        if key not in data:
            raise UsageError(f"--file {path}: missing key {key!r}")
    methods, train_args = data["methods"], data.get("train_args", [])
    if (not isinstance(methods, list) or not all(isinstance(m, str) for m in methods)
            or not isinstance(train_args, list)
            or not all(isinstance(a, str) for a in train_args)):
        raise UsageError(f"--file {path}: methods and train_args must be lists of strings")
    if not isinstance(data.get("references", True), bool):
        raise UsageError(f"--file {path}: references must be true or false")
    sparsities = data.get("sparsities", [])
    spec = SweepSpec(preset=str(data["preset"]), methods=parse_list(",".join(methods), "methods"),
                     sparsities=parse_sparsities(sparsities) if sparsities else (),
                     seeds=parse_sweep_seeds(data["seeds"]), train_args=tuple(train_args),
                     references=data.get("references", True))
    return spec, {k: data[k] for k in options if k in data}


# --- the manifest -------------------------------------------------------------------------------

def spec_dict(spec: SweepSpec) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}


def check_out_dir(out: Path, spec: SweepSpec) -> bool:
    """Whether ``out`` already holds this sweep (True: resume it). ``UsageError`` if it holds a
    different sweep, or anything that is not a sweep."""
    manifest = out / MANIFEST_FILE
    if manifest.is_file():
        try:
            stored = {"references": True, **json.loads(manifest.read_text())["spec"]}
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UsageError(f"--out {out}: its {MANIFEST_FILE} is unreadable") from None
        if stored != spec_dict(spec):
            differ = [k for k, v in spec_dict(spec).items() if stored.get(k) != v]
            raise UsageError(f"--out {out} holds a different sweep (its {', '.join(differ)} "
                             "differ); give the same grid to resume it, or another --out")
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and holds no sweep ({MANIFEST_FILE}); give a new "
                         "or empty directory")
    return False


def write_manifest(out: Path, spec: SweepSpec) -> None:
    """``sweep.json``: the grid and its runs."""
    out.mkdir(parents=True, exist_ok=True)
    runs = [{"name": r.name, "method": r.method, "sparsity": r.sparsity, "seed": r.seed,
             **({} if r.task is None else {"task": r.task})} for r in expand_grid(spec)]
    tmp = out / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps({"version": 1, "spec": spec_dict(spec), "runs": runs}, indent=1))
    os.replace(tmp, out / MANIFEST_FILE)


def read_manifest(out: Path) -> tuple[SweepSpec, list[SweepRun]]:
    data = json.loads((out / MANIFEST_FILE).read_text())
    spec = data["spec"]
    spec = SweepSpec(preset=spec["preset"], methods=tuple(spec["methods"]),
                     sparsities=tuple(spec["sparsities"]), seeds=tuple(spec["seeds"]),
                     train_args=tuple(spec["train_args"]),
                     references=spec.get("references", True))  # absent before references
    return spec, [SweepRun(r["method"], r["sparsity"], r["seed"], r.get("task"))
                  for r in data["runs"]]


# --- state of the runs and the plan -------------------------------------------------------------

def run_state(out: Path, run: SweepRun) -> str:
    """``finished``, ``partial`` (holds a checkpoint to resume from) or ``pending``."""
    run_dir = out / run.name
    if read_finished(run_dir) is not None:
        return "finished"
    if has_checkpoint(run_dir / CHECKPOINT_DIR):
        return "partial"
    return "pending"


def latest_checkpoint_step(run_dir: Path) -> int:
    return max(int(p.name) for p in (run_dir / CHECKPOINT_DIR).iterdir() if p.name.isdigit())


def default_group_size(preset: str, accelerators: int = 0) -> int:
    """Runs per vmapped group (1 for agents without a group kind, ``run_loop.GROUP_KINDS``).

    PPO on MiniGrid: 8 per device (on 2 CPU cores 8 runs took 1.4-1.5x less time than one after
    another; a run's rollout, envs and agent state take a few MB, so 8 fit any GPU). SAC on
    Meta-World: 1 on a CPU, where one paper-size update already keeps every core busy (8 vmapped
    updates took 0.95x the time of 8 sequential ones on 2 cores: nothing to gain), and 4 per GPU,
    where a run's replay buffer lives in device memory (``buffer_capacity`` x (2 x 39
    observation + 4 action + 2) float32: 0.34 GB per million transitions) and its Meta-World
    envs step on the host (untested: no GPU was available)."""
    from mtrl_sparse.run_loop import GROUP_KINDS

    config = PRESETS[preset].config
    agent = config.AGENT
    if agent not in GROUP_KINDS or (agent == "sac" and config.schedule == "sequential"):
        return 1  # sequential SAC runs switch their envs at boundaries: one at a time
    if agent == "ppo":
        return 8 * max(accelerators, 1)
    return 4 * accelerators if accelerators else 1


def plan_groups(out: Path, runs: list[SweepRun], group_size: int) -> list[list[SweepRun]]:
    """The unfinished runs in groups of at most ``group_size``: runs of one method (and one
    reference task), and (to resume together) either all fresh or all with their latest
    checkpoint at one env step."""
    by_key: dict[tuple[str, str | None, int], list[SweepRun]] = {}
    for run in runs:
        state = run_state(out, run)
        if state == "finished":
            continue
        step = latest_checkpoint_step(out / run.name) if state == "partial" else -1
        by_key.setdefault((run.method, run.task, step), []).append(run)
    groups = []
    for members in by_key.values():
        count = math.ceil(len(members) / group_size)
        size = math.ceil(len(members) / count)  # balanced: 10 runs by 8 -> 5 + 5
        groups.extend(members[i:i + size] for i in range(0, len(members), size))
    return groups


def group_label(group: list[SweepRun]) -> str:
    """A short name of a group for logs and the live table."""
    first = group[0]
    rest = f"+{len(group) - 1}" if len(group) > 1 else ""
    return f"{first.cell}-seed{first.seed}{rest}"


# --- runs claimed by a live worker ---------------------------------------------------------------


class RunClaimedError(RuntimeError):
    """A run that a live process (a worker of an earlier sweep command) is training."""


def lock_path(out: Path, name: str) -> Path:
    """The lock file of run ``name`` (``dense/seed0``) of the sweep in ``out``."""
    return out / LOG_DIR / LOCK_DIR / (name.replace("/", "--") + ".lock")


def try_lock(out: Path, name: str) -> int | None:
    """An open descriptor holding the exclusive lock of run ``name``, or None when a live
    process holds it (the lock goes with the process, however it ends)."""
    path = lock_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return try_flock(path, create=True)


def claimed(out: Path, name: str) -> bool:
    """Whether a live process holds run ``name`` now."""
    fd = try_lock(out, name)
    if fd is None:
        return True
    os.close(fd)
    return False


@contextlib.contextmanager
def claim_runs(out: Path, names: list[str]):
    """Hold every run of ``names`` for the block (``RunClaimedError`` if a live process holds
    one), so that a restarted sweep never trains a run beside an orphaned worker of a killed
    one."""
    held = []
    try:
        for name in names:
            fd = try_lock(out, name)
            if fd is None:
                raise RunClaimedError(f"run {name} is being trained by another live process (a "
                                      "worker of an earlier sweep command); left to it")
            held.append(fd)
        yield
    finally:
        for fd in held:
            os.close(fd)


# --- one group, in its worker process -----------------------------------------------------------

def run_group(out: Path, names: list[str]) -> None:
    """Train the runs ``names`` of the sweep in ``out`` as one group: resume those with a
    checkpoint, start the others (removing what a run wrote before its first checkpoint); the
    runs are claimed for the worker's lifetime (``claim_runs``)."""
    pin_to_cores(os.environ.get(CORES_ENV))
    spec, runs = read_manifest(out)
    by_name = {run.name: run for run in runs}
    group = [by_name[name] for name in names]
    with claim_runs(out, names):
        train_runs(out, spec, group)


def train_runs(out: Path, spec: SweepSpec, group: list[SweepRun]) -> None:
    """``run_group``'s training, its runs claimed."""
    from mtrl_sparse.run_loop import train_group
    from mtrl_sparse.train_args import use_compile_cache, use_cpu_devices

    todo = [run for run in group if run_state(out, run) != "finished"]
    resumed = [run for run in todo if run_state(out, run) == "partial"]
    fresh = [run for run in todo if run not in resumed]
    use_cpu_devices(max(len(todo), 1))  # a plan's group is all fresh or all resumed
    use_compile_cache()
    if resumed:
        parsed = [parse_train_args(["--resume", "--run-dir", str(out / run.name),
                                    "--no-progress"]) for run in resumed]
        train_group([config for config, _, _ in parsed], resume=True, preset=spec.preset)
    if fresh:
        for run in fresh:
            if (out / run.name).exists():
                shutil.rmtree(out / run.name)  # started, no checkpoint: start again
        parsed = [parse_train_args(train_arguments(spec, run, out)) for run in fresh]
        train_group([config for config, _, _ in parsed], preset=spec.preset)


CORES_ENV = "MTRL_SPARSE_WORKER_CORES"
"""Environment variable of a sweep worker on a CPU: the cores it runs on (``0`` or ``0,1``)."""


def pin_to_cores(cores: str | None) -> None:
    """Run this process (and the XLA threads it starts) on ``cores`` only, before JAX starts
    its CPU backend; None: leave the affinity alone. Workers sharing the CPU then do not
    contend for the same cores, and each splits its group over its own cores
    (``train_args.cpu_devices_for``)."""
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})


def worker_cores() -> list[int]:
    """The CPU cores sweep workers may use: this process's affinity."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def core_sets(workers: int, cores: list[int]) -> list[str]:
    """The cores of each of ``workers`` CPU workers: the machine's cores dealt out evenly."""
    per_worker = max(1, len(cores) // workers)
    return [",".join(str(c) for c in cores[i * per_worker:(i + 1) * per_worker] or cores)
            for i in range(workers)]


def worker_command(out: Path, group: list[SweepRun]) -> list[str]:
    return [sys.executable, "-m", "mtrl_sparse.sweep", str(out), *(run.name for run in group)]


def last_error_line(log: Path) -> str:
    """The line of a failed worker's log that names its error (its last non-empty line)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return "no log"
    lines = [line for line in lines if line]
    return lines[-1] if lines else "exited without output"


def run_progress(out: Path, run: SweepRun) -> int:
    """Env steps of the last metrics row of ``run`` (0 before any)."""
    if not (out / run.name / CONFIG_FILE).is_file():
        return 0
    try:
        rows = read_metrics(out / run.name)
    except (OSError, ValueError):
        return 0
    return int(rows[-1]["step"]) if rows else 0


# --- executing the plan -------------------------------------------------------------------------

@dataclass
class GroupOutcome:
    group: list[SweepRun]
    error: str | None  # None: the worker exited cleanly


@dataclass
class Status:
    """What the live table shows: runs by state, the running groups, the failures, the ETA."""

    total: int
    finished: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (run, error)
    running: list[list[SweepRun]] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.perf_counter)
    finished_at_start: int = 0

    def eta_seconds(self) -> float | None:
        """Remaining time at the rate of the runs finished by this command (None before one)."""
        done_here = self.finished - self.finished_at_start
        if done_here <= 0:
            return None
        remaining = self.total - self.finished - len(self.failed)
        return remaining * (time.perf_counter() - self.started) / done_here


def execute_local(out: Path, groups: list[list[SweepRun]], workers: int,
                  worker_env: Callable[[int], dict[str, str]],
                  on_change: Callable[[list[list[SweepRun]], list[GroupOutcome]], None],
                  stop: StopRequest | None = None) -> list[GroupOutcome]:
    """Run the groups' workers, at most ``workers`` at a time (worker slot ``i`` gets the
    environment ``worker_env(i)``); ``on_change(running, outcomes)`` after each start or end.
    Once ``stop`` is requested (a preemption signal) no group starts, the running workers get
    SIGTERM (each checkpoints its runs and exits with ``REQUEUE_EXIT``) and are waited for."""
    (out / LOG_DIR).mkdir(exist_ok=True)
    queue, outcomes = list(groups), []
    running: dict[int, tuple[subprocess.Popen, list[SweepRun], Any]] = {}
    stop = stop or StopRequest()
    forwarded = False
    try:
        while (queue and not stop.requested) or running:
            if stop.requested and not forwarded:
                for process, _, _ in running.values():
                    process.send_signal(signal.SIGTERM)
                forwarded = True
            for slot in range(workers):
                if slot in running or not queue or stop.requested:
                    continue
                # A group with a run that a live orphan (of a killed sweep) trains waits for it.
                group = next((g for g in queue if not any(claimed(out, r.name) for r in g)),
                             None)
                if group is not None:
                    queue.remove(group)
                    log = (out / LOG_DIR / f"{group_label(group)}.log").open("w")
                    process = subprocess.Popen(worker_command(out, group), stdout=log,
                                               stderr=subprocess.STDOUT,
                                               env={**os.environ, **worker_env(slot)})
                    running[slot] = (process, group, log)
                    on_change([g for _, g, _ in running.values()], outcomes)
            time.sleep(0.5)
            for slot, (process, group, log) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                preempted = process.returncode == REQUEUE_EXIT or (forwarded
                                                                   and process.returncode < 0)
                error = (None if process.returncode == 0 or preempted  # preempted: resumes
                         else last_error_line(Path(log.name)))
                outcomes.append(GroupOutcome(group, error))
                del running[slot]
                on_change([g for _, g, _ in running.values()], outcomes)
            on_change([g for _, g, _ in running.values()], outcomes)
    finally:
        for process, _, log in running.values():
            process.terminate()
            process.wait()
            log.close()
    return outcomes


RAY_TASK_RETRIES = 3
"""Retries of a group's Ray task whose node died or whose worker process was killed by a
signal (each retry resumes the group's runs from their checkpoints); a worker that exits with an
error (a NaN, a bad config) is not retried."""


class WorkerKilledError(RuntimeError):
    """A group's worker process ended by a signal (killed, out of memory): Ray retries it."""


def execute_ray(out: Path, groups: list[list[SweepRun]], address: str | None,
                cpus_per_group: Callable[[list[SweepRun]], int], gpus_per_group: float,
                on_change: Callable[[list[list[SweepRun]], list[GroupOutcome]], None],
                command: Callable[[Path, list[SweepRun]], list[str]] | None = None,
                stop: StopRequest | None = None) -> list[GroupOutcome]:
    """Each group a Ray task on the cluster at ``address`` (None: a local Ray instance),
    requesting its CPUs and GPUs; the task runs the group's worker process (``command``,
    default ``worker_command``) on its node, which writes under ``out`` (a directory every node
    sees). A task whose node dies or whose worker is killed is retried up to
    ``RAY_TASK_RETRIES`` times, then listed as failed while the other groups go on. Once
    ``stop`` is requested the driver stops waiting and shuts Ray down, cancelling the tasks
    (their runs resume from their checkpoints)."""
    command = command or worker_command
    stop = stop or StopRequest()
    import ray

    ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        remote = ray.remote(_ray_group_task)
        (out / LOG_DIR).mkdir(exist_ok=True)
        pending = {}
        for group in groups:
            ref = remote.options(
                num_cpus=cpus_per_group(group), num_gpus=gpus_per_group,
                max_retries=RAY_TASK_RETRIES, retry_exceptions=[WorkerKilledError],
            ).remote(command(out, group), str(out / LOG_DIR / f"{group_label(group)}.log"))
            pending[ref] = group
        outcomes: list[GroupOutcome] = []
        while pending and not stop.requested:
            on_change(list(pending.values()), outcomes)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                group = pending.pop(ref)
                try:
                    error = ray.get(ref)
                except Exception as failure:  # retries spent: the node lost, the worker killed
                    error = (f"Ray task failed after {RAY_TASK_RETRIES} retries: "
                             f"{_ray_failure_line(failure)}")
                outcomes.append(GroupOutcome(group, error))
        on_change([], outcomes)
        return outcomes
    finally:
        ray.shutdown()


def _ray_group_task(command: list[str], log_path: str) -> str | None:
    """A Ray task: run a group's worker process, its output into ``log_path``; the error line
    or None. (Ray sets CUDA_VISIBLE_DEVICES to the task's GPUs; the worker inherits it.)"""
    with open(log_path, "w") as log:
        returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                    env=dict(os.environ)).returncode
    if returncode < 0:
        raise WorkerKilledError(f"the group's worker was killed by "
                                f"{signal.Signals(-returncode).name}")
    return None if returncode in (0, REQUEUE_EXIT) else last_error_line(Path(log_path))


def _ray_failure_line(failure: BaseException) -> str:
    """The line of a Ray task failure that says why (its cause's message, not the traceback)."""
    cause = getattr(failure, "cause", None)
    lines = [line.strip() for line in str(cause or failure).splitlines() if line.strip()]
    return lines[-1] if lines else type(failure).__name__


# --- the sweep command --------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepOptions:
    """How a sweep executes (not part of its grid: a resumed sweep may change them)."""

    group_size: int | None = None  # None: default_group_size
    backend: str = "local"  # local | ray
    address: str | None = None  # Ray cluster address; None: a local Ray instance
    workers: int | None = None  # local: groups at a time; None: by cores or GPUs
    gpus: int | None = None  # GPUs of this machine (local) or per group (ray); None: detected


def gpu_ids() -> list[str]:
    """The NVIDIA GPUs visible to this process (``CUDA_VISIBLE_DEVICES``, else those ``nvidia-smi
    -L`` lists), without starting JAX on them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return [str(i) for i in range(sum(line.startswith("GPU ")
                                      for line in listing.stdout.splitlines()))]


def clock(seconds: float) -> str:
    """``seconds`` as h:mm:ss."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class Monitor:
    """The live table of a sweep (rich, on a terminal) or one line per change (otherwise):
    runs done / running / failed / pending and the ETA."""

    def __init__(self, out: Path, runs: list[SweepRun], interactive: bool):
        self.out, self.runs = out, runs
        self.status = Status(total=len(runs))
        self.status.finished = self.status.finished_at_start = sum(
            run_state(out, r) == "finished" for r in runs)
        self.interactive = interactive
        self.live = None
        self.last_state: tuple = ()

    def __enter__(self) -> Monitor:
        if self.interactive:
            from rich.live import Live

            self.live = Live(self.table(), refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self.table())
            self.live.__exit__(*exc)

    def update(self, running: list[list[SweepRun]], outcomes: list[GroupOutcome]) -> None:
        status = self.status
        status.running = running
        status.failed = [(run.name, o.error) for o in outcomes if o.error for run in o.group
                         if run_state(self.out, run) != "finished"]
        status.finished = sum(run_state(self.out, r) == "finished" for r in self.runs)
        if self.live is not None:
            self.live.update(self.table())
            return
        state = (tuple(self.counts().items()), tuple(map(group_label, status.running)))
        if state != self.last_state:  # a line per change of state, not per tick of the ETA
            print(self.summary_line(), flush=True)
            self.last_state = state

    def counts(self) -> dict[str, int]:
        status = self.status
        running = sum(run_state(self.out, run) != "finished" for g in status.running for run in g)
        return {"done": status.finished, "running": running, "failed": len(status.failed),
                "pending": status.total - status.finished - running - len(status.failed)}

    def eta_text(self) -> str:
        eta = self.status.eta_seconds()
        return "-" if eta is None else clock(eta)

    def summary_line(self) -> str:
        counts = " ".join(f"{k} {v}" for k, v in self.counts().items())
        groups = ", ".join(group_label(g) for g in self.status.running)
        return (f"sweep {self.out}: {counts} of {self.status.total}, ETA {self.eta_text()}"
                + (f"; running {groups}" if groups else ""))

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"sweep {self.out} ({self.status.total} runs)")
        for column in ("runs", "count", "detail"):
            table.add_column(column)
        counts = self.counts()
        elapsed = clock(time.perf_counter() - self.status.started)
        table.add_row("done", str(counts["done"]), f"elapsed {elapsed}, ETA {self.eta_text()}")
        table.add_row("running", str(counts["running"]), "")
        for group in self.status.running:
            table.add_row("", "", f"{group_label(group)}: env step "
                                  f"{run_progress(self.out, group[0]):,}")
        table.add_row("failed", str(counts["failed"]), "")
        for name, error in self.status.failed[:10]:
            table.add_row("", "", f"{name}: {error}")
        table.add_row("pending", str(counts["pending"]), "")
        return table


def run_sweep(spec: SweepSpec, out: Path, options: SweepOptions,
              interactive: bool = False) -> tuple[int, list[tuple[str, str]], str | None]:
    """Run (or resume) the sweep of ``spec`` in ``out``; returns (finished runs, failed runs as
    (name, error line), the preemption signal that stopped it or None). The grid must have
    passed ``check_spec`` and ``check_out_dir``. ``UsageError`` when another live sweep command
    runs ``out`` (``SWEEP_LOCK``). A preemption signal (SIGTERM, SIGUSR1) stops the local
    workers after a checkpoint of their runs (``execute_local``)."""
    out.mkdir(parents=True, exist_ok=True)
    lock = try_lock(out, SWEEP_LOCK)
    if lock is None:
        raise UsageError(f"--out {out} is being run by another live sweep command; wait for it "
                         "to end (or stop it) before running it again")
    try:
        with catch_preemption() as stop:
            finished, failed = _run_sweep(spec, out, options, interactive, stop)
        return finished, failed, stop.signal_name
    finally:
        os.close(lock)


def _run_sweep(spec: SweepSpec, out: Path, options: SweepOptions, interactive: bool,
               stop: StopRequest) -> tuple[int, list[tuple[str, str]]]:
    """``run_sweep`` with ``out`` held."""
    write_manifest(out, spec)
    runs = expand_grid(spec)
    local_gpus = len(gpu_ids()) if options.gpus is None else options.gpus
    group_size = options.group_size or default_group_size(
        spec.preset, local_gpus if options.backend == "local" else int(options.gpus or 0))
    cpu_workers = options.workers or len(worker_cores())
    groups = plan_groups(out, runs, group_size)
    if options.backend == "local" and not local_gpus and options.group_size is None:
        while len(groups) < cpu_workers and group_size > 1:  # a group for every worker
            group_size -= 1
            groups = plan_groups(out, runs, group_size)
    with Monitor(out, runs, interactive) as monitor:
        if not groups:
            monitor.update([], [])
        elif options.backend == "ray":
            gpus = options.gpus or 0
            from mtrl_sparse.train_args import cpu_devices_for

            execute_ray(out, groups, options.address,
                        lambda g: 1 if gpus else cpu_devices_for(len(g)), gpus, monitor.update,
                        stop=stop)
        elif local_gpus:
            devices = gpu_ids()[:local_gpus] or [str(i) for i in range(local_gpus)]
            execute_local(out, groups, options.workers or len(devices),
                          lambda slot: {"CUDA_VISIBLE_DEVICES": devices[slot % len(devices)]},
                          monitor.update, stop)
        else:
            pinned = core_sets(cpu_workers, worker_cores()) if cpu_workers > 1 else None
            execute_local(out, groups, cpu_workers,
                          lambda slot: {CORES_ENV: pinned[slot]} if pinned else {},
                          monitor.update, stop)
    return monitor.status.finished, monitor.status.failed


def main(argv: list[str] | None = None) -> int:
    """The worker process of one group: ``python -m mtrl_sparse.sweep OUT RUN_NAME...``."""
    argv = sys.argv[1:] if argv is None else argv
    out, names = Path(argv[0]), argv[1:]
    reuse_freed_memory()
    use_training_precision()
    try:
        run_group(out, names)
    except RunClaimedError as error:  # not a fault: the group is left to the live process
        print(error, file=sys.stderr, flush=True)
        return 1
    except RunStopped as error:  # preempted (75), out of space (74), a NaN or an env (1)
        print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except Exception as error:  # one line for the sweep's summary, the traceback above it
        import traceback

        traceback.print_exc()
        print(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
