"""The multi-task vector environment interface every backend implements.

A backend runs ``num_envs`` environments, each bound to one task for its whole life. Envs are laid
out task-major: env ``e`` runs task ``env_task_ids[e]``, and every task has the same number of
copies (``envs_per_task``), so env ``e`` runs task ``e // envs_per_task``.

Autoreset convention (the same for every backend): **explicit reset**. ``step`` never resets.
It returns the true next observation of every env, together with ``terminated`` / ``truncated``
flags. Before the next ``step``, the caller resets the envs whose episode ended with
``reset_done(done)``, which returns a full observation batch where only those rows changed.
Env steps are counted per transition: one ``step`` of the vector is ``num_envs`` env steps; a reset
produces no transition and counts nothing.

Because nothing is reset behind the caller's back, the caller can snapshot the environments' random
state (``get_rng_state``) between the end of an episode and the next reset; restoring it
(``set_rng_state``) and then resetting reproduces the following episodes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np


@dataclass(frozen=True)
class MultiTaskEnvSpec:
    """Static description of a multi-task vector environment.

    Attributes:
        task_names: name of each task; a task id indexes this tuple.
        obs_shape: shape of one observation (without the env axis).
        action_dim: continuous: size of the action vector; discrete: number of actions.
        action_kind: ``"continuous"`` (actions in [-1, 1]) or ``"discrete"``.
        envs_per_task: copies of each task in the vector.
        max_episode_steps: the time limit of an episode (truncation).
    """

    task_names: tuple[str, ...]
    obs_shape: tuple[int, ...]
    action_dim: int
    action_kind: Literal["continuous", "discrete"]
    envs_per_task: int
    max_episode_steps: int

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def num_envs(self) -> int:
        return self.num_tasks * self.envs_per_task

    @property
    def env_task_ids(self) -> np.ndarray:
        """Task id of every env, shape (num_envs,), int32, task-major."""
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
    """A batch of task-bound environments with explicit resets (see module docstring)."""

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

    def get_rng_state(self) -> Any:
        """A JSON-serialisable snapshot of every random generator the envs use."""
        ...

    def set_rng_state(self, state: Any) -> None:
        """Restore a snapshot from ``get_rng_state``; the next ``reset`` then reproduces exactly."""
        ...

    def close(self) -> None: ...
