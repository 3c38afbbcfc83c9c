"""Meta-World (v3) backend of the multi-task vector environment interface (see ``base.py``).

A ``MetaWorldVectorEnv`` wraps a gymnasium ``SyncVectorEnv`` / ``AsyncVectorEnv`` whose sub-envs
are built exactly like metaworld's own ``make_mt_envs`` builds them (same wrapper stack, same task
lists, ``terminate_on_success=False``, no one-hot in the observation), except that every task can
have several copies. Envs are task-major: env ``e`` runs task ``e // envs_per_task``.

Randomness. A sub-env's only random generator that matters is its ``np_random`` (shared by
metaworld's ``RandomTaskSelectWrapper``, which picks one of the task's 50 goal/object layouts at
every reset); it is seeded once, at construction. ``reset`` never reseeds it (metaworld ignores the
``seed`` argument of ``reset``), so the state snapshot of ``get_rng_state`` is taken from, and
restored into, metaworld's ``CheckpointWrapper``.

Episodes end only by the time limit (``terminated`` is always False): every sub-env has the same
``max_episode_steps``, so envs reset together (e.g. by ``reset``) truncate on the same step.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import gymnasium as gym
import metaworld
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3, MT50_V3

from mtrl_sparse.envs.base import (
    EnvFailure,
    MultiTaskEnvSpec,
    StepResult,
    checked_done,
    how_it_ended,
)

METAWORLD_BENCHMARKS = ("MT1", "MT10", "MT50", "CW10")

CW10_TASKS = ("hammer-v3", "push-wall-v3", "faucet-close-v3", "push-back-v3", "stick-pull-v3",
              "handle-press-side-v3", "push-v3", "shelf-place-v3", "window-close-v3",
              "peg-unplug-side-v3")
"""The Continual World CW10 sequence (Wolczyk et al. 2021), in its order, as v3 tasks."""

# Meta-World's envs refuse to step past their own horizon (``SawyerXYZEnv.max_path_length``).
_MAX_PATH_LENGTH = 500

# Checkpoint entries that hold random state; the rest of a checkpoint (the task list) is fixed by
# the constructor arguments, so it is neither saved nor restored.
_RNG_KEYS = ("rng_state", "env_rng_state")


def metaworld_task_names(benchmark: str, task: str | None = None) -> tuple[str, ...]:
    """Task names of a benchmark; a task id indexes this tuple.

    MT10 / MT50: the benchmark's tasks in metaworld's order (``train_classes``); CW10: the
    Continual World sequence (``CW10_TASKS``); ``task`` must be None. MT1: ``(task,)``, where
    ``task`` is any Meta-World v3 task name (e.g. ``"reach-v3"``).

    Raises:
        ValueError: unknown benchmark or task (the message lists the accepted values).
    """
    if benchmark not in METAWORLD_BENCHMARKS:
        raise ValueError(
            f"unknown Meta-World benchmark {benchmark!r}; expected one of {METAWORLD_BENCHMARKS}"
        )
    if benchmark == "MT1":
        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(
                f"MT1 needs a Meta-World v3 task name, got {task!r}; expected one of "
                f"{tuple(ALL_V3_ENVIRONMENTS)}"
            )
        return (task,)
    if task is not None:
        raise ValueError(f"task is only accepted with benchmark 'MT1' (got task={task!r})")
    if benchmark == "CW10":
        return CW10_TASKS
    return tuple(MT10_V3 if benchmark == "MT10" else MT50_V3)


def _copy_seed(seed: int, copy: int) -> int:
    """Seed of copy ``copy`` of a task: ``seed`` itself for copy 0 (as in ``make_mt_envs``), an
    independent seed derived from ``(seed, copy)`` for the other copies."""
    if copy == 0:
        return int(seed)
    return int(np.random.SeedSequence(seed, spawn_key=(copy,)).generate_state(1)[0])


@functools.lru_cache(maxsize=4)
def _make_benchmark(benchmark: str, task: str | None, seed: int) -> metaworld.Benchmark:
    """The metaworld benchmark object: env classes and 50 goal/object layouts per task.

    Costly: metaworld resets each task's env 50 times to draw the layouts (MT10 takes seconds),
    so the objects (read-only task lists) are cached per process: a run's training and evaluation
    envs share one.
    """
    if benchmark == "MT1":
        return metaworld.MT1(task, seed=seed)
    if benchmark == "CW10":  # each task as its own MT1 (MT50 would draw 40 other tasks' layouts)
        return _JoinedBenchmark([metaworld.MT1(name, seed=seed) for name in CW10_TASKS])
    return metaworld.MT10(seed=seed) if benchmark == "MT10" else metaworld.MT50(seed=seed)


class _JoinedBenchmark:
    """The env classes and layouts of several benchmarks together (what ``_env_factories``
    reads: ``train_classes`` and ``train_tasks``)."""

    def __init__(self, parts: list[metaworld.Benchmark]):
        self.train_classes = {k: v for part in parts for k, v in part.train_classes.items()}
        self.train_tasks = [t for part in parts for t in part.train_tasks]


def _env_factories(
    benchmark: metaworld.Benchmark,
    task_names: tuple[str, ...],
    envs_per_task: int,
    seed: int,
    max_episode_steps: int,
) -> list[Callable[[], gym.Env]]:
    """One picklable constructor per sub-env, task-major.

    Uses metaworld's private ``_init_each_env``: it is the only way to build the exact wrapper
    stack of ``make_mt_envs`` (which builds a single env per task) with several copies per task.
    ``env_id`` is the env index, which makes every ``CheckpointWrapper`` id unique.
    """
    factories = []
    for task_id, name in enumerate(task_names):
        tasks = [t for t in benchmark.train_tasks if t.env_name == name]
        for copy in range(envs_per_task):
            factories.append(
                partial(
                    metaworld._init_each_env,
                    env_cls=benchmark.train_classes[name],
                    tasks=tasks,
                    seed=_copy_seed(seed, copy),
                    max_episode_steps=max_episode_steps,
                    terminate_on_success=False,
                    use_one_hot=False,
                    env_id=task_id * envs_per_task + copy,
                )
            )
    return [partial(_naming_failures, factory, index, task_names[index // envs_per_task])
            for index, factory in enumerate(factories)]


class _NamedFailures(gym.Wrapper):
    """Re-raises an exception of the env's ``step`` or ``reset`` (a MuJoCo error, say) as an
    ``EnvFailure`` naming the env and its task, in this process or in an async worker (whose
    error gymnasium re-raises in the parent)."""

    def __init__(self, env: gym.Env, index: int, task: str):
        super().__init__(env)
        self._label = f"env {index} (task {task})"

    def step(self, action: Any) -> Any:
        try:
            return self.env.step(action)
        except Exception as error:
            raise EnvFailure(f"{self._label} raised in step: {type(error).__name__}: "
                             f"{_first_line(error)}") from error

    def reset(self, **kwargs: Any) -> Any:
        try:
            return self.env.reset(**kwargs)
        except Exception as error:
            raise EnvFailure(f"{self._label} raised in reset: {type(error).__name__}: "
                             f"{_first_line(error)}") from error


def _naming_failures(factory: Callable[[], gym.Env], index: int, task: str) -> gym.Env:
    return _NamedFailures(factory(), index, task)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _to_json(value: Any) -> Any:
    """``value`` with tuples as lists and numpy scalars/arrays as Python numbers/lists."""
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


def _check_args(
    envs_per_task: int, seed: int, vector_strategy: str, max_episode_steps: int
) -> None:
    """Raise ValueError on a constructor argument out of range."""
    if envs_per_task < 1:
        raise ValueError(f"envs_per_task must be >= 1, got {envs_per_task}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if vector_strategy not in ("sync", "async"):
        raise ValueError(f"vector_strategy must be 'sync' or 'async', got {vector_strategy!r}")
    if not 1 <= max_episode_steps <= _MAX_PATH_LENGTH:
        raise ValueError(
            f"max_episode_steps must be in [1, {_MAX_PATH_LENGTH}], got {max_episode_steps}"
        )


class MetaWorldVectorEnv:
    """Meta-World MT1 / MT10 / MT50 as a ``MultiTaskVectorEnv`` with explicit resets.

    Observations are (num_envs, 39) float32 (no task one-hot: the agent adds it), actions are
    (num_envs, 4) in [-1, 1].

    Args:
        benchmark: one of ``METAWORLD_BENCHMARKS``.
        task: the task of ``"MT1"`` (e.g. ``"reach-v3"``); must be None otherwise.
        envs_per_task: copies of every task; copy ``c > 0`` is seeded independently of copy 0.
        seed: non-negative; fixes every sub-env's generator (and, by default, the layouts).
        layout_seed: fixes the benchmark's 50 goal/object layouts per task; None: ``seed``.
            Evaluation envs pass the training seed here so that they play the same tasks.
        vector_strategy: ``"sync"`` (one process) or ``"async"`` (one process per env).
        max_episode_steps: time limit of an episode, in [1, 500].
    """

    def __init__(
        self,
        benchmark: str,
        *,
        task: str | None = None,
        envs_per_task: int = 1,
        seed: int = 0,
        vector_strategy: Literal["sync", "async"] = "sync",
        max_episode_steps: int = 500,
        layout_seed: int | None = None,
    ) -> None:
        task_names = metaworld_task_names(benchmark, task)
        _check_args(envs_per_task, seed, vector_strategy, max_episode_steps)
        factories = _env_factories(
            _make_benchmark(benchmark, task, seed if layout_seed is None else layout_seed),
            task_names,
            envs_per_task,
            seed,
            max_episode_steps,
        )
        disabled = gym.vector.AutoresetMode.DISABLED
        if vector_strategy == "sync":
            self._envs = gym.vector.SyncVectorEnv(factories, autoreset_mode=disabled)
        else:
            # Workers start from a fork server, not by forking this process: forking a process
            # that already runs JAX's threads can deadlock.
            self._envs = gym.vector.AsyncVectorEnv(factories, autoreset_mode=disabled,
                                                   context="forkserver")
        self.spec = MultiTaskEnvSpec(
            task_names=task_names,
            obs_shape=tuple(self._envs.single_observation_space.shape),
            action_dim=int(self._envs.single_action_space.shape[0]),
            action_kind="continuous",
            envs_per_task=envs_per_task,
            max_episode_steps=max_episode_steps,
        )
        self._obs = np.zeros((self.spec.num_envs, *self.spec.obs_shape), dtype=np.float32)
        self._failed = False

    def reset(self) -> np.ndarray:
        """Reset every env; returns observations (num_envs, 39) float32."""
        obs, _ = self._guarded(self._envs.reset)
        self._obs = np.asarray(obs, dtype=np.float32)
        return self._obs.copy()

    def reset_done(self, done: np.ndarray) -> np.ndarray:
        """Reset the envs where ``done`` (bool, (num_envs,)) is set; returns all observations
        (num_envs, 39) float32, where only the reset rows changed."""
        done = checked_done(done, self.spec.num_envs)
        if done.any():  # gymnasium rejects an all-False reset_mask
            obs, _ = self._guarded(self._envs.reset, options={"reset_mask": done})
            self._obs = np.asarray(obs, dtype=np.float32)
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every env with ``actions`` (num_envs, 4); never resets (see ``reset_done``)."""
        actions = np.asarray(actions, dtype=np.float32)
        expected = (self.spec.num_envs, self.spec.action_dim)
        if actions.shape != expected:
            raise ValueError(f"actions must have shape {expected}, got {actions.shape}")
        obs, reward, terminated, truncated, info = self._guarded(self._envs.step, actions)
        self._obs = np.asarray(obs, dtype=np.float32)
        return StepResult(
            obs=self._obs.copy(),
            reward=np.asarray(reward, dtype=np.float32),
            terminated=np.asarray(terminated, dtype=np.bool_),
            truncated=np.asarray(truncated, dtype=np.bool_),
            success=np.asarray(info["success"]).astype(np.bool_),
        )

    def current_task_ids(self) -> np.ndarray:
        """Task id of every env, (num_envs,) int32: the fixed ``spec.env_task_ids``."""
        return self.spec.env_task_ids

    def mujoco_scenes(self) -> list[tuple[Any, Any]]:
        """``(MjModel, MjData)`` of every sub-env (for drawing them with ``mujoco.Renderer``);
        only with ``vector_strategy="sync"`` (async sub-envs live in other processes)."""
        if not isinstance(self._envs, gym.vector.SyncVectorEnv):
            raise ValueError("mujoco_scenes needs a vector env built with vector_strategy='sync'")
        return [(env.unwrapped.model, env.unwrapped.data) for env in self._envs.envs]

    def get_rng_state(self) -> dict[str, Any]:
        """JSON-serialisable random state of every sub-env: ``{"envs": [entry, ...]}``, where an
        entry holds the ``CheckpointWrapper`` id and the checkpoint's RNG states (not the tasks,
        which the constructor arguments fix)."""
        entries = [
            {"env_id": env_id, **{key: _to_json(ckpt[key]) for key in _RNG_KEYS}}
            for env_id, ckpt in self._envs.call("get_checkpoint")
        ]
        return {"envs": entries}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore a ``get_rng_state`` snapshot (taken from an env built with the same arguments);
        the next ``reset`` then reproduces the episodes that followed the snapshot."""
        entries = state["envs"]
        current = self._envs.call("get_checkpoint")
        if [e["env_id"] for e in entries] != [env_id for env_id, _ in current]:
            raise ValueError("RNG state does not match this env's benchmark/tasks/envs_per_task")
        merged = [
            (env_id, {**ckpt, **{key: entry[key] for key in _RNG_KEYS}})
            for (env_id, ckpt), entry in zip(current, entries, strict=True)
        ]
        # Every sub-env receives the whole list and loads the entry with its own id.
        self._envs.call("load_checkpoint", merged)

    def _guarded(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call`` of the gymnasium vector env; an env's exception arrives as an ``EnvFailure``
        naming it (``_NamedFailures``), and a worker process that died (killed, out of memory)
        becomes one naming its env and task."""
        try:
            return call(*args, **kwargs)
        except EnvFailure:
            self._failed = True
            raise
        except Exception as error:
            self._failed = True
            dead = [(i, p.exitcode) for i, p in enumerate(getattr(self._envs, "processes", []))
                    if not p.is_alive()]
            if not dead:
                raise
            index, code = dead[0]
            task = self.spec.task_names[self.spec.env_task_ids[index]]
            raise EnvFailure(f"the worker process of env {index} (task {task}) died "
                             f"({how_it_ended(code)})") from error

    def close(self) -> None:
        """Close the sub-envs (and their worker processes with ``"async"``; after a failure
        they are terminated rather than asked)."""
        if self._failed and isinstance(self._envs, gym.vector.AsyncVectorEnv):
            with contextlib.suppress(Exception):
                self._envs.close(terminate=True)
            return
        self._envs.close()
