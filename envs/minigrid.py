"""MiniGrid multi-task sets as a multi-task vector environment (interface in ``base.py``).

The task sets are those of the reference paper (Todorov et al., TMLR 2025, arXiv 2508.06871):
MT3, MT5 = MT3 + 2 tasks, MT7 = MT5 + 2 tasks, each a tuple of Farama ``minigrid`` env ids. As in
the paper, a task is drawn uniformly at every episode, so the spec has ``task_sampling =
"per_episode"`` and ``num_envs`` workers.

A **worker** is one slot of the vector: it holds one instance of every task env (built by
``gymnasium.make`` with the registered defaults, so each task keeps its own ``max_steps``) and a
numpy generator that draws the task of each episode. Worker ``w`` of a vector seeded ``seed`` seeds
its task draws with ``SeedSequence(seed, spawn_key=(w, 0))`` and task ``t``'s env with
``SeedSequence(seed, spawn_key=(w, 1 + t))``; so a worker's episodes depend on ``(seed, w)`` only,
not on ``num_envs`` nor on how workers are spread over processes.

Observations are the egocentric 7x7x3 ``image`` (object, colour, state indices) as float32 with its
raw integer values, (num_envs, 7, 7, 3); actions are (num_envs,) integers in [0, 7). Reward is
MiniGrid's: ``1 - 0.9 * step_count / max_steps`` on success, else 0. ``terminated`` is MiniGrid's
(goal reached, or a failure such as lava, the wrong object or the wrong door order), ``truncated``
is the task's time limit, ``success`` is a terminated step with a positive reward.

Resets are explicit (``base.py``): ``step`` never resets, and stepping an env whose episode has
ended raises. With ``compute_optimal=True`` every reset also computes the length of the episode's
shortest solution (``minigrid_optimal.optimal_steps``, in the worker that owns the env), from which
``episode_best_returns`` gives the denominators of the normalised return used for evaluation.

Vectorisation. ``"sync"`` steps all workers in this process. ``"async"`` spreads the workers over
``processes`` worker processes (contiguous blocks; one per CPU core by default) that each step their
block in a loop. Actions, observations, rewards and flags travel through one shared-memory buffer,
so a vector call costs one short message to and from each process (pickling the arrays instead
took longer than a MiniGrid step). Both strategies give identical results. A MiniGrid step costs
about 0.18 ms (three quarters of it rendering the observation) and an async call adds about 0.1-0.2
ms, so on a 2-core machine ``"sync"`` is as fast or faster up to 8 envs (measured with random
actions on idle cores: 1 or 2 envs about 5,000 env-steps/s sync against 1,800 / 3,600 async;
8 envs about 5,200 either way). ``"async"`` pays off only with more cores and more envs.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from mtrl_sparse.envs.base import (
    EnvFailure,
    MultiTaskEnvSpec,
    StepResult,
    checked_discrete_actions,
    checked_done,
    how_it_ended,
)
from mtrl_sparse.envs.minigrid_optimal import best_return, optimal_steps

MINIGRID_BENCHMARKS: dict[str, tuple[str, ...]] = {
    "MT3": (
        "MiniGrid-LavaGapS7-v0",
        "MiniGrid-RedBlueDoors-6x6-v0",
        "MiniGrid-MemoryS11-v0",
    ),
    "MT5": (
        "MiniGrid-LavaGapS7-v0",
        "MiniGrid-RedBlueDoors-6x6-v0",
        "MiniGrid-MemoryS11-v0",
        "MiniGrid-DoorKey-6x6-v0",
        "MiniGrid-DistShift1-v0",
    ),
    "MT7": (
        "MiniGrid-LavaGapS7-v0",
        "MiniGrid-RedBlueDoors-6x6-v0",
        "MiniGrid-MemoryS11-v0",
        "MiniGrid-DoorKey-6x6-v0",
        "MiniGrid-DistShift1-v0",
        "MiniGrid-SimpleCrossingS9N2-v0",
        "MiniGrid-MultiRoom-N2-S4-v0",
    ),
}

OBS_SHAPE = (7, 7, 3)
NUM_ACTIONS = 7  # MiniGrid's Actions: left, right, forward, pickup, drop, toggle, done
UNSOLVABLE = -1  # ``episode_optimal_steps`` of an episode with no solution before its time limit


def minigrid_task_names(benchmark: str, task: str | None = None) -> tuple[str, ...]:
    """The env ids of a benchmark, in the paper's order; a task id indexes this tuple. With
    ``task`` (one of the benchmark's env ids), that task alone: ``(task,)`` (single-task runs,
    such as the references of a sequential schedule's forward transfer).

    Raises:
        ValueError: unknown benchmark, or a task not in it (the message lists the accepted ones).
    """
    if benchmark not in MINIGRID_BENCHMARKS:
        expected = tuple(MINIGRID_BENCHMARKS)
        raise ValueError(f"unknown MiniGrid benchmark {benchmark!r}; expected one of {expected}")
    tasks = MINIGRID_BENCHMARKS[benchmark]
    if task is None:
        return tasks
    if task not in tasks:
        raise ValueError(f"task {task!r} is not in MiniGrid {benchmark}; expected one of {tasks}")
    return (task,)


FARAMA_INSTALL = "pip install 'mtrl-sparse[farama]'"




def _register_farama_envs() -> None:
    """Import Farama's ``minigrid``, which registers its env ids with gymnasium.

    Only the Farama backend needs it (the JAX MiniGrid is self-contained), so it is imported here
    rather than with this module.

    Raises:
        ModuleNotFoundError: ``minigrid`` is not installed (the message says how to install it).
    """
    try:
        import minigrid  # noqa: F401
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"the farama MiniGrid backend needs Farama's minigrid: "
                                  f"{FARAMA_INSTALL} ({error})") from error


def farama_minigrid_installed() -> bool:
    """Whether Farama's ``minigrid`` (an optional dependency, the ``farama`` extra) imports (which
    registers its env ids with gymnasium)."""
    try:
        _register_farama_envs()
    except ModuleNotFoundError:
        return False
    return True


def _make_task_env(task_name: str, seed: np.random.SeedSequence) -> Any:
    """The unwrapped MiniGrid env of ``task_name`` with its generator seeded from ``seed``.

    Unwrapped: ``gymnasium.make`` adds only order and API checkers here (MiniGrid registers no
    ``TimeLimit``; the env enforces its own ``max_steps``).
    """
    _register_farama_envs()
    env = gym.make(task_name).unwrapped
    env.np_random = np.random.Generator(np.random.PCG64(seed))
    return env


class _Worker:
    """One slot of the vector: every task's env and the generator that draws each episode's task.

    Holds the current task id, and (with ``compute_optimal``) the current episode's shortest
    solution length (``UNSOLVABLE`` if none).
    """

    def __init__(self, task_names: Sequence[str], seed: int, index: int, compute_optimal: bool):
        self.envs = [
            _make_task_env(name, np.random.SeedSequence(seed, spawn_key=(index, 1 + t)))
            for t, name in enumerate(task_names)
        ]
        self.task_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 0)))
        self.compute_optimal = compute_optimal
        self.task_id = 0
        self.optimal = UNSOLVABLE

    def reset(self) -> np.ndarray:
        """Draw a task uniformly, reset its env; returns the image (7, 7, 3) uint8."""
        self.task_id = int(self.task_rng.integers(len(self.envs)))
        env = self.envs[self.task_id]
        obs, _ = env.reset()
        if self.compute_optimal:
            steps = optimal_steps(env)
            self.optimal = UNSOLVABLE if steps is None else steps
        return obs["image"]

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        """Step the current task's env; returns (image, reward, terminated, truncated)."""
        obs, reward, terminated, truncated, _ = self.envs[self.task_id].step(action)
        return obs["image"], float(reward), bool(terminated), bool(truncated)

    def get_rng_state(self) -> dict[str, Any]:
        """Bit-generator states of the task draws and of every task env (JSON-serialisable)."""
        return {
            "task_sampler": self.task_rng.bit_generator.state,
            "task_envs": [env.np_random.bit_generator.state for env in self.envs],
        }

    def get_state(self) -> bytes:
        """Everything the worker's future depends on, mid-episode included: its task envs (grid,
        agent, step count, generators), its task generator, current task and optimal steps."""
        return pickle.dumps((self.envs, self.task_rng, self.task_id, self.optimal))

    def set_state(self, state: bytes) -> None:
        """Restore a ``get_state`` snapshot (of a worker of the same task set)."""
        envs, task_rng, task_id, optimal = pickle.loads(state)
        if [type(e) for e in envs] != [type(e) for e in self.envs]:
            raise ValueError("env state does not match this worker's task set")
        self.envs, self.task_rng, self.task_id, self.optimal = envs, task_rng, task_id, optimal

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore a ``get_rng_state`` snapshot; affects the following resets."""
        if len(state["task_envs"]) != len(self.envs):
            raise ValueError("RNG state does not match this env's benchmark")
        self.task_rng.bit_generator.state = state["task_sampler"]
        for env, env_state in zip(self.envs, state["task_envs"], strict=True):
            env.np_random.bit_generator.state = env_state


# The arrays a vector call exchanges with the workers, as (per-env shape, dtype). They live in one
# buffer (shared memory with "async"), so a call carries no array in its messages: the caller
# writes ``actions`` / ``reset_mask``, each block writes its rows of the outputs.
_ARRAY_FIELDS: dict[str, tuple[tuple[int, ...], type]] = {
    "images": (OBS_SHAPE, np.uint8),
    "reward": ((), np.float64),
    "terminated": ((), np.bool_),
    "truncated": ((), np.bool_),
    "task_ids": ((), np.int32),
    "optimal": ((), np.int32),
    "actions": ((), np.int64),
    "reset_mask": ((), np.bool_),
}


def _buffer_layout(num_envs: int) -> tuple[dict[str, int], int]:
    """Byte offset of every ``_ARRAY_FIELDS`` array of ``num_envs`` rows (8-byte aligned) in one
    buffer, and the buffer's size."""
    offsets, size = {}, 0
    for name, (shape, dtype) in _ARRAY_FIELDS.items():
        offsets[name] = size
        nbytes = num_envs * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        size += -(-nbytes // 8) * 8
    return offsets, size


def _buffer_arrays(buffer: Any, num_envs: int, rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """Numpy views of every ``_ARRAY_FIELDS`` array in ``buffer`` (rows ``rows`` only)."""
    offsets, _ = _buffer_layout(num_envs)
    views = {}
    for name, (shape, dtype) in _ARRAY_FIELDS.items():
        count = num_envs * int(np.prod(shape, dtype=np.int64))
        flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=offsets[name])
        views[name] = flat.reshape(num_envs, *shape)[rows]
    return views


class _WorkerBlock:
    """Consecutive workers (rows ``rows`` of the vector) stepped together, in this process or in
    one worker process; inputs and outputs are their rows of the shared arrays."""

    def __init__(self, task_names: Sequence[str], seed: int, rows: slice, compute_optimal: bool,
                 num_envs: int, buffer: Any):
        indices = range(num_envs)[rows]
        self.workers = [_Worker(task_names, seed, i, compute_optimal) for i in indices]
        self.arrays = _buffer_arrays(buffer, num_envs, rows)

    def reset(self) -> None:
        """Reset the workers where ``reset_mask``; writes their images, task ids, optimal steps."""
        out = self.arrays
        for i in np.flatnonzero(out["reset_mask"]):
            out["images"][i] = self.workers[i].reset()
            out["task_ids"][i] = self.workers[i].task_id
            out["optimal"][i] = self.workers[i].optimal

    def step(self) -> None:
        """Step every worker with its ``actions``; writes images, reward, terminated, truncated."""
        out = self.arrays
        for i, (worker, action) in enumerate(zip(self.workers, out["actions"], strict=True)):
            image, reward, terminated, truncated = worker.step(int(action))
            out["images"][i] = image
            out["reward"][i], out["terminated"][i], out["truncated"][i] = (
                reward, terminated, truncated)

    def get_rng_state(self) -> list[dict[str, Any]]:
        return [w.get_rng_state() for w in self.workers]

    def set_rng_state(self, states: list[dict[str, Any]]) -> None:
        for w, state in zip(self.workers, states, strict=True):
            w.set_rng_state(state)

    def get_state(self) -> list[bytes]:
        return [w.get_state() for w in self.workers]

    def set_state(self, states: list[bytes]) -> None:
        for w, state in zip(self.workers, states, strict=True):
            w.set_state(state)


def _serve(conn: Connection, block_args: tuple) -> None:
    """Worker-process loop: build a ``_WorkerBlock``, then answer ``(method, args)`` messages with
    ``(True, result)`` or ``(False, traceback)`` until ``close``."""
    try:
        block = _WorkerBlock(*block_args)
        conn.send((True, None))
    except Exception:
        conn.send((False, traceback.format_exc()))
        return
    while True:
        method, args = conn.recv()
        if method == "close":
            conn.close()
            return
        try:
            conn.send((True, getattr(block, method)(*args)))
        except Exception:
            conn.send((False, traceback.format_exc()))


class _ProcessBlocks:
    """Worker blocks in worker processes; ``call`` runs a method on every block in parallel.

    The buffer is shared memory that every process maps.
    """

    def __init__(self, blocks_args: list[tuple], buffer_size: int):
        # A fork server, not a fork of this process: forking a process that already runs JAX's
        # threads can deadlock (as in metaworld.py).
        ctx = mp.get_context("forkserver")
        self.buffer = ctx.RawArray("B", buffer_size)
        self.conns, self.procs = [], []
        for args in blocks_args:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, (*args, self.buffer)), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        try:
            self._receive_all()
        except RuntimeError:
            self.close()
            raise

    def _receive_all(self) -> list[Any]:
        try:
            results = [conn.recv() for conn in self.conns]
        except EOFError as error:
            raise RuntimeError("a MiniGrid worker process exited unexpectedly (a script that "
                               "builds async envs needs an `if __name__ == '__main__':` guard)"
                               ) from error
        errors = [message for ok, message in results if not ok]
        if errors:
            raise RuntimeError(f"MiniGrid worker process failed:\n{errors[0]}")
        return [message for _, message in results]

    def call(self, method: str, per_block_args: list[tuple] | None = None) -> list[Any]:
        """``method`` of every block; ``EnvFailure`` if a worker process died (killed, out of
        memory) or a block raised."""
        per_block_args = per_block_args or [()] * len(self.conns)
        try:
            for conn, args in zip(self.conns, per_block_args, strict=True):
                conn.send((method, args))
            return self._receive_all()
        except (OSError, RuntimeError) as error:
            dead = [(i, p.exitcode) for i, p in enumerate(self.procs) if not p.is_alive()]
            if not dead:
                raise EnvFailure(f"a MiniGrid worker block raised in {method}: "
                                 f"{str(error).strip().splitlines()[-1]}") from error
            block, code = dead[0]
            raise EnvFailure(f"the worker process of MiniGrid worker block {block} died "
                             f"({how_it_ended(code)})") from error

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            with contextlib.suppress(BrokenPipeError, OSError):  # the process may have died
                conn.send(("close", ()))
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
            conn.close()


class _LocalBlocks:
    """The same interface as ``_ProcessBlocks`` with the blocks and the buffer in this process."""

    def __init__(self, blocks_args: list[tuple], buffer_size: int):
        self.buffer = bytearray(buffer_size)
        self.blocks = [_WorkerBlock(*args, self.buffer) for args in blocks_args]

    def call(self, method: str, per_block_args: list[tuple] | None = None) -> list[Any]:
        per_block_args = per_block_args or [()] * len(self.blocks)
        return [getattr(b, method)(*a) for b, a in zip(self.blocks, per_block_args, strict=True)]

    def close(self) -> None:
        pass


def _max_steps_per_task(task_names: Sequence[str]) -> tuple[int, ...]:
    """Each task's registered time limit (MiniGrid's ``max_steps``)."""
    _register_farama_envs()
    return tuple(int(gym.make(name).unwrapped.max_steps) for name in task_names)


class MiniGridHostEnv:
    """What both MiniGrid backends' host interfaces (``MiniGridVectorEnv`` and the JAX one)
    derive from their own ``reset_done``, ``episode_optimal_steps`` and ``current_task_ids``."""

    spec: MultiTaskEnvSpec

    def reset(self) -> np.ndarray:
        """Reset every env (each draws a task); returns observations (num_envs, 7, 7, 3) float32."""
        return self.reset_done(np.ones(self.spec.num_envs, dtype=np.bool_))

    def episode_best_returns(self) -> np.ndarray:
        """Best achievable return of every env's current episode, (num_envs,) float64:
        ``best_return(optimal_steps, max_steps of its task)``, NaN where unsolvable. An episode's
        normalised return is its return divided by this (at most 1 up to float rounding)."""
        optimal = self.episode_optimal_steps()
        max_steps = np.asarray(self.spec.max_steps_per_task)[self.current_task_ids()]
        best = best_return(optimal.astype(np.float64), max_steps)
        return np.where(optimal == UNSOLVABLE, np.nan, best)


class MiniGridVectorEnv(MiniGridHostEnv):
    """A MiniGrid task set as a ``MultiTaskVectorEnv``: ``num_envs`` workers that each draw a task
    uniformly at every reset (see the module docstring).

    Args:
        benchmark: a key of ``MINIGRID_BENCHMARKS`` (``"MT3"``, ``"MT5"``, ``"MT7"``).
        num_envs: number of workers (>= 1).
        seed: non-negative; fixes every task draw and every layout.
        task: one env id of the benchmark to run alone (every worker on it); None: all its tasks.
        vector_strategy: ``"sync"`` (this process) or ``"async"`` (worker processes).
        compute_optimal: compute each episode's shortest solution at reset (for evaluation; costs
            a few ms to tens of ms per reset).
        processes: ``"async"`` only: number of worker processes; None: one per CPU core, at most
            ``num_envs``. Results do not depend on it.
    """

    def __init__(
        self,
        benchmark: str,
        num_envs: int,
        seed: int = 0,
        vector_strategy: Literal["sync", "async"] = "sync",
        *,
        task: str | None = None,
        compute_optimal: bool = False,
        processes: int | None = None,
    ) -> None:
        task_names = minigrid_task_names(benchmark, task)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if vector_strategy not in ("sync", "async"):
            raise ValueError(f"vector_strategy must be 'sync' or 'async', got {vector_strategy!r}")
        if vector_strategy == "sync" and processes is not None:
            raise ValueError("processes is for vector_strategy='async' only")
        if processes is None:
            processes = min(num_envs, os.cpu_count() or 1)
        if not 1 <= processes <= num_envs:
            raise ValueError(f"processes must be in [1, num_envs={num_envs}], got {processes}")
        max_steps = _max_steps_per_task(task_names)
        self.spec = MultiTaskEnvSpec(
            task_names=task_names,
            obs_shape=OBS_SHAPE,
            action_dim=NUM_ACTIONS,
            action_kind="discrete",
            envs_per_task=0,
            max_episode_steps=max(max_steps),
            task_sampling="per_episode",
            workers=num_envs,
            max_steps_per_task=max_steps,
        )
        self.compute_optimal = compute_optimal
        num_blocks = 1 if vector_strategy == "sync" else processes
        bounds = np.linspace(0, num_envs, num_blocks + 1).round().astype(int)
        self._rows = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        # A block's arguments, to which the blocks' container appends the shared buffer.
        blocks_args = [(task_names, seed, rows, compute_optimal, num_envs) for rows in self._rows]
        blocks = _LocalBlocks if vector_strategy == "sync" else _ProcessBlocks
        self._blocks = blocks(blocks_args, _buffer_layout(num_envs)[1])
        self._arrays = _buffer_arrays(self._blocks.buffer, num_envs)
        self._arrays["optimal"][:] = UNSOLVABLE
        self._ended = np.ones(num_envs, dtype=np.bool_)  # needs a reset before the next step

    def reset_done(self, done: np.ndarray) -> np.ndarray:
        """Reset the envs where ``done`` (bool, (num_envs,)); each draws a new task. Returns all
        observations (num_envs, 7, 7, 3) float32, where only the reset rows changed."""
        done = checked_done(done, self.spec.num_envs)
        if done.any():
            self._arrays["reset_mask"][:] = done
            self._blocks.call("reset")
            self._ended &= ~done
        return self._arrays["images"].astype(np.float32)

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every env with ``actions`` ((num_envs,) integers in [0, 7)); never resets.

        Raises:
            ValueError: actions of the wrong shape, type or range.
            RuntimeError: an env's episode has ended (or was never started) and it was not reset.
        """
        actions = checked_discrete_actions(actions, self.spec.num_envs, NUM_ACTIONS)
        if self._ended.any():
            raise RuntimeError(f"envs {np.flatnonzero(self._ended).tolist()} must be reset "
                               "(reset / reset_done) before they are stepped")
        self._arrays["actions"][:] = actions
        self._blocks.call("step")
        out = self._arrays
        terminated, truncated = out["terminated"].copy(), out["truncated"].copy()
        self._ended = terminated | truncated
        return StepResult(
            obs=out["images"].astype(np.float32),
            reward=out["reward"].astype(np.float32),
            terminated=terminated,
            truncated=truncated,
            success=terminated & (out["reward"] > 0),
        )

    def current_task_ids(self) -> np.ndarray:
        """Task id of every env's current episode, (num_envs,) int32; changes only at a reset."""
        return self._arrays["task_ids"].copy()

    def episode_optimal_steps(self) -> np.ndarray:
        """Shortest solution length of every env's current episode, (num_envs,) int32 (computed at
        its reset; ``UNSOLVABLE`` where none fits in the time limit).

        Raises:
            RuntimeError: the env was built without ``compute_optimal``.
        """
        if not self.compute_optimal:
            raise RuntimeError("episode_optimal_steps needs a MiniGridVectorEnv built with "
                               "compute_optimal=True")
        return self._arrays["optimal"].copy()

    def get_rng_state(self) -> dict[str, Any]:
        """JSON-serialisable random state: ``{"workers": [entry, ...]}``, one entry per env with the
        bit-generator states of its task draws and of each task env."""
        blocks = self._blocks.call("get_rng_state")
        return {"workers": [worker for block in blocks for worker in block]}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore a ``get_rng_state`` snapshot (from an env built with the same benchmark and
        num_envs); the next ``reset`` then reproduces the episodes that followed the snapshot."""
        workers = state["workers"]
        if len(workers) != self.spec.num_envs:
            raise ValueError(f"RNG state has {len(workers)} workers, this env {self.spec.num_envs}")
        self._blocks.call("set_rng_state", [(workers[rows],) for rows in self._rows])

    def get_state(self) -> bytes:
        """A snapshot of the whole vector, episodes in progress included (pickled MiniGrid envs
        and generators; for checkpoints of the same code version): ``set_state`` of it on an
        env built with the same benchmark and ``num_envs`` continues exactly from here."""
        blocks = self._blocks.call("get_state")
        return pickle.dumps({
            "workers": [worker for block in blocks for worker in block],
            "arrays": {name: self._arrays[name].copy()
                       for name in ("images", "task_ids", "optimal")},
            "ended": self._ended.copy(),
        })

    def set_state(self, state: bytes) -> np.ndarray:
        """Restore a ``get_state`` snapshot; returns the current observations (as ``reset``)."""
        snapshot = pickle.loads(state)
        workers = snapshot["workers"]
        if len(workers) != self.spec.num_envs:
            raise ValueError(f"env state has {len(workers)} workers, this env {self.spec.num_envs}")
        self._blocks.call("set_state", [(workers[rows],) for rows in self._rows])
        for name, array in snapshot["arrays"].items():
            self._arrays[name][:] = array
        self._ended = snapshot["ended"].copy()
        return self._arrays["images"].astype(np.float32)

    def close(self) -> None:
        """Stop the worker processes (``"async"``)."""
        self._blocks.close()
