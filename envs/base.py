"""The multi-task vector environment interface every backend implements.

A backend runs ``num_envs`` environments. How an env gets its task is the spec's ``task_sampling``:

- ``"fixed"`` (Meta-World): each env is bound to one task for its whole life. Envs are laid out
  task-major: env ``e`` runs task ``env_task_ids[e]``, and every task has the same number of copies
  (``envs_per_task``), so env ``e`` runs task ``e // envs_per_task`` and ``num_envs`` is
  ``num_tasks * envs_per_task``.
- ``"per_episode"`` (MiniGrid): each of the ``workers`` envs draws a task at every reset, so an env
  has no fixed task (``envs_per_task`` is 0 and ``env_task_ids`` raises) and ``num_envs`` is
  ``workers``.

Either way ``current_task_ids()`` gives the task of every env's current episode; it changes only at
a reset. Tasks may have different time limits (``max_steps_per_task``); ``max_episode_steps`` is
the largest of them.

Autoreset convention (the same for every backend): **explicit reset**. ``step`` never resets.
It returns the true next observation of every env, together with ``terminated`` / ``truncated``
flags. Before the next ``step``, the caller resets the envs whose episode ended with
``reset_done(done)``, which returns a full observation batch where only those rows changed.
Env steps are counted per transition: one ``step`` of the vector is ``num_envs`` env steps; a reset
produces no transition and counts nothing.

Because nothing is reset behind the caller's back, the caller can snapshot the environments' random
state (``get_rng_state``) between the end of an episode and the next reset; restoring it
(``set_rng_state``) and then resetting reproduces the following episodes exactly (task draws
included).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np


class EnvFailure(RuntimeError):
    """An environment raised in ``step`` or ``reset``, or its worker process died; the message
    names the env index and its task."""


def how_it_ended(exitcode: int | None) -> str:
    """How a worker process ended, from its ``exitcode`` (negative: the signal that killed it)."""
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


@dataclass(frozen=True)
class MultiTaskEnvSpec:
    """Static description of a multi-task vector environment.

    Attributes:
        task_names: name of each task; a task id indexes this tuple.
        obs_shape: shape of one observation (without the env axis).
        action_dim: continuous: size of the action vector; discrete: number of actions.
        action_kind: ``"continuous"`` (actions in [-1, 1]) or ``"discrete"``.
        envs_per_task: ``"fixed"``: copies of each task in the vector (>= 1); ``"per_episode"``: 0.
        max_episode_steps: the longest time limit of an episode (truncation), over all tasks.
        task_sampling: ``"fixed"`` (an env keeps one task) or ``"per_episode"`` (an env draws a
            task at every reset); see the module docstring.
        workers: ``"per_episode"``: the number of envs (>= 1); ``"fixed"``: 0.
        max_steps_per_task: the time limit of each task; its maximum is ``max_episode_steps``.
            Empty (the default): every task has ``max_episode_steps``.
    """

    task_names: tuple[str, ...]
    obs_shape: tuple[int, ...]
    action_dim: int
    action_kind: Literal["continuous", "discrete"]
    envs_per_task: int
    max_episode_steps: int
    task_sampling: Literal["fixed", "per_episode"] = "fixed"
    workers: int = 0
    max_steps_per_task: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.task_sampling == "fixed":
            if self.envs_per_task < 1 or self.workers != 0:
                raise ValueError("task_sampling 'fixed' needs envs_per_task >= 1 and workers == 0")
        elif self.task_sampling == "per_episode":
            if self.workers < 1 or self.envs_per_task != 0:
                raise ValueError(
                    "task_sampling 'per_episode' needs workers >= 1 and envs_per_task == 0"
                )
        else:
            raise ValueError(f"unknown task_sampling {self.task_sampling!r}")
        if not self.max_steps_per_task:  # frozen: the default is filled in once, here
            object.__setattr__(
                self, "max_steps_per_task", (self.max_episode_steps,) * self.num_tasks
            )
        if (
            len(self.max_steps_per_task) != self.num_tasks
            or max(self.max_steps_per_task) != self.max_episode_steps
        ):
            raise ValueError(
                f"max_steps_per_task {self.max_steps_per_task} must have one entry per task and "
                f"its maximum must be max_episode_steps ({self.max_episode_steps})"
            )

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def num_envs(self) -> int:
        if self.task_sampling == "per_episode":
            return self.workers
        return self.num_tasks * self.envs_per_task

    @property
    def env_task_ids(self) -> np.ndarray:
        """Task id of every env, shape (num_envs,), int32, task-major (``"fixed"`` only).

        Raises:
            ValueError: with ``"per_episode"`` sampling, where envs have no fixed task (use the
                env's ``current_task_ids()``).
        """
        if self.task_sampling != "fixed":
            raise ValueError("envs have no fixed task with per-episode task sampling; "
                             "use the env's current_task_ids()")
        return np.repeat(np.arange(self.num_tasks, dtype=np.int32), self.envs_per_task)


@dataclass(frozen=True)
class StepResult:
    """What one vector step returns; every array has a leading env axis of size num_envs.

    Attributes:
        obs: next observation of each env (the final observation where the episode ended).
        reward: float32 (num_envs,).
        terminated: bool (num_envs,); the episode ended in a terminal state (no bootstrap).
        truncated: bool (num_envs,); the time limit was hit (bootstrap through it).
        success: bool (num_envs,); the task's success flag at this step.
    """

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray


class MultiTaskVectorEnv(Protocol):
    """A batch of multi-task environments with explicit resets (see module docstring)."""

    spec: MultiTaskEnvSpec

    def reset(self) -> np.ndarray:
        """Reset every env; returns observations (num_envs, *obs_shape) float32."""
        ...

    def reset_done(self, done: np.ndarray) -> np.ndarray:
        """Reset the envs where ``done`` (bool, (num_envs,)) is set; returns all observations."""
        ...

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every env; continuous actions (num_envs, action_dim), discrete (num_envs,)."""
        ...

    def current_task_ids(self) -> np.ndarray:
        """Task id of every env's current episode, (num_envs,) int32; changes only at a reset."""
        ...

    def get_rng_state(self) -> Any:
        """A JSON-serialisable snapshot of every random generator the envs use."""
        ...

    def set_rng_state(self, state: Any) -> None:
        """Restore a snapshot from ``get_rng_state``; the next ``reset`` then reproduces exactly."""
        ...

    def close(self) -> None: ...


def checked_done(done: Any, num_envs: int) -> np.ndarray:
    """``done`` as a (num_envs,) bool array; ``ValueError`` for another shape."""
    done = np.asarray(done, dtype=np.bool_)
    if done.shape != (num_envs,):
        raise ValueError(f"done must have shape ({num_envs},), got {done.shape}")
    return done


def checked_discrete_actions(actions: Any, num_envs: int, num_actions: int) -> np.ndarray:
    """``actions`` as (num_envs,) integers in [0, num_actions); ``ValueError`` otherwise."""
    actions = np.asarray(actions)
    if actions.shape != (num_envs,) or not np.issubdtype(actions.dtype, np.integer):
        raise ValueError(f"actions must be integers of shape ({num_envs},), got "
                         f"{actions.dtype} {actions.shape}")
    if ((actions < 0) | (actions >= num_actions)).any():
        raise ValueError(f"actions must be in [0, {num_actions}), got {actions}")
    return actions
