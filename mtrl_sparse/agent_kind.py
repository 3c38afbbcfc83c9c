"""What the run loop needs from an agent kind, and the bookkeeping every kind shares.

The run loop (``mtrl_sparse.run_loop``) owns the schedule of a run: interval crossings, timing,
checkpoint cadence, resume rules, evaluation, episode statistics and the run summary. An agent kind
(off-policy with a replay buffer, ``mtrl_sparse.off_policy``; on-policy with rollouts,
``mtrl_sparse.on_policy``) supplies the parts that differ, as an object following ``AgentKind``:
how one iteration advances the run (a vector step and its updates; a rollout and its update), its
training-row metrics, its plasticity probe, its evaluation protocol and the state a checkpoint
holds. Kinds are chosen by the config's agent from ``run_loop.AGENT_KINDS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mtrl_sparse.mask_stats import NetworkMasks
from mtrl_sparse.methods.topology import LayerSlices
from mtrl_sparse.stops import NonFiniteLossError
from mtrl_sparse.videos import Video

EVAL_SEED_OFFSET = 1_000_003
"""Evaluation envs are seeded ``seed + EVAL_SEED_OFFSET``: other episodes of the same tasks."""


def eval_env_seed(seed: int) -> int:
    """The seed of a run's evaluation envs, given the run's seed."""
    return seed + EVAL_SEED_OFFSET


def check_finite_env_values(obs: np.ndarray, reward: np.ndarray, task_ids: np.ndarray,
                            task_names: tuple[str, ...], env_step: int) -> None:
    """``NonFiniteLossError`` naming the quantity, the task, the env and the env step of the
    first NaN or Inf among a vector step's observations ``obs`` (num_envs, ...) and rewards
    ``reward`` (num_envs,); env ``e`` runs task ``task_ids[e]``. Integer observations (MiniGrid's
    images) are finite by their type and not scanned."""
    for quantity, values in (("observation", obs), ("reward", reward)):
        if np.issubdtype(values.dtype, np.integer):
            continue
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if not finite.all():
            env = int(np.flatnonzero(~finite)[0])
            raise NonFiniteLossError(
                f"non-finite {quantity} from task {task_names[int(task_ids[env])]} (env {env}) "
                f"at env step {env_step}; run stopped")


@dataclass
class Iteration:
    """What one iteration of an agent kind did.

    Attributes:
        env_steps: env steps it collected (transitions summed over all envs).
        updates: the kind's update counter after it (host-side count, no device read): gradient
            steps of the network that plasticity probes are scheduled on (SAC: every network;
            PPO: the actor).
        at_boundary: whether the run may checkpoint or end here (SAC: every env just ended its
            episode; PPO: always, at a rollout's end).
        seconds: wall time by part: ``env`` (inside the envs), ``agent`` (the agent's jitted calls
            and their host bookkeeping), ``compile`` (first calls of each compiled variant).
    """

    env_steps: int
    updates: int
    at_boundary: bool
    seconds: dict[str, float] = field(default_factory=dict)


class EpisodeTracker:
    """Returns and success of the training episodes that ended since the last metrics row.

    ``record`` is called once per vector step with every env's task, reward, end flag and success
    flag; an episode succeeds when its success flag was set at any of its steps (the design
    page, docs/pages/design.md, Conventions). ``pop_row`` gives the ``train/...`` fields of a
    metrics row and starts over.
    """

    def __init__(self, task_names: tuple[str, ...], num_envs: int):
        self.task_names = task_names
        self.returns = np.zeros(num_envs)
        self.succeeded = np.zeros(num_envs, bool)
        self.ended: list[list[tuple[float, bool]]] = [[] for _ in task_names]

    def record(self, task_ids: np.ndarray, rewards: np.ndarray, done: np.ndarray,
               success: np.ndarray) -> None:
        """One vector step: (N,) task ids, rewards, episode-end and success flags."""
        self.returns += rewards
        self.succeeded |= success
        for env in np.flatnonzero(done):
            self.ended[task_ids[env]].append((float(self.returns[env]),
                                              bool(self.succeeded[env])))
        self.returns[done] = 0.0
        self.succeeded[done] = False

    def record_rollout(self, task_ids: np.ndarray, rewards: np.ndarray, done: np.ndarray,
                       success: np.ndarray) -> None:
        """``record`` for each row of (T, N) arrays: T vector steps in order (a rollout)."""
        for step in zip(task_ids, rewards, done, success, strict=True):
            self.record(*step)

    def pop_row(self) -> dict[str, Any]:
        """``train/episodes``, ``train/return``, ``train/success_rate`` and per task
        ``train/return/<task>``, ``train/success/<task>`` (None where no episode ended)."""
        episodes = [e for per_task in self.ended for e in per_task]
        row: dict[str, Any] = {"train/episodes": len(episodes),
                               **_episode_means(episodes, "train/return", "train/success_rate")}
        for name, per_task in zip(self.task_names, self.ended, strict=True):
            row.update(_episode_means(per_task, f"train/return/{name}", f"train/success/{name}"))
        self.ended = [[] for _ in self.task_names]
        return row

    def dump(self) -> dict[str, Any]:
        """JSON-ready state for a checkpoint: episodes in progress and those not yet in a row."""
        return {"returns": self.returns.tolist(), "succeeded": self.succeeded.tolist(),
                "ended": self.ended}

    def load(self, saved: dict[str, Any]) -> None:
        """Restore a ``dump``."""
        self.returns = np.asarray(saved["returns"], dtype=np.float64)
        self.succeeded = np.asarray(saved["succeeded"], dtype=bool)
        self.ended = [[(float(r), bool(s)) for r, s in per_task] for per_task in saved["ended"]]


def _episode_means(episodes: list[tuple[float, bool]], return_key: str,
                   success_key: str) -> dict[str, float | None]:
    """Mean return and success rate of (return, success) ``episodes``; None for none."""
    if not episodes:
        return {return_key: None, success_key: None}
    return {return_key: float(np.mean([r for r, _ in episodes])),
            success_key: float(np.mean([s for _, s in episodes]))}


class AgentKind(Protocol):
    """One agent kind's side of a run (see the module docstring). Built from a run config;
    ``start`` or ``restore`` comes first, then iterations; ``close`` releases the envs."""

    task_names: tuple[str, ...]
    num_envs: int
    """Training envs stepped together (the width of ``EpisodeTracker.record``)."""
    budget_env_steps: int
    """The run ends at the first boundary at or after this many env steps."""
    score_name: str
    """The evaluation row's headline field (``eval/success_rate``, ``eval/normalized_return``)."""
    layer_slices: LayerSlices
    """The networks' leaves that stack the per-task heads (``methods.topology.LayerSlices``)."""

    def start(self) -> None:
        """A fresh agent state from the config's seed; environments reset."""

    def abstract_state(self) -> Any:
        """Shapes and dtypes of the checkpointed device state (for restoring)."""

    def restore(self, state: Any, meta: dict[str, Any]) -> None:
        """Continue from a checkpoint: ``state`` and this kind's part of ``meta``."""

    def iterate(self, episodes: EpisodeTracker) -> Iteration:
        """Advance the run by one iteration, recording every vector step in ``episodes``."""

    def set_phase(self, phase: int) -> None:
        """Sequential schedules: train on task ``phase`` from the next iteration on (no-op if
        already); called before every iteration of such a run."""

    def train_row(self) -> dict[str, Any]:
        """The agent's fields of a training row (update counts, losses, method states);
        ``NonFiniteLossError`` if a loss went NaN or Inf."""

    def probe_row(self) -> dict[str, Any]:
        """A plasticity-metrics row (without ``step``) of the current state."""

    def evaluate(self) -> dict[str, Any]:
        """The current policy on the evaluation envs: an ``eval/...`` row (without ``step``)."""

    def evaluate_checkpoint(self, state: Any, env_step: int) -> dict[str, Any]:
        """The evaluation row of a checkpoint's ``state`` saved at ``env_step``, with the run's
        own evaluation episodes; the state becomes this kind's state."""

    @staticmethod
    def video_problem(config: Any) -> str | None:
        """Why videos of ``config``'s run cannot be made here (one line naming what to install
        or change), or None."""

    def record_videos(self, env_step: int, episodes: int) -> Iterator[tuple[str, Video]]:
        """(task, video) of every task: ``episodes`` episodes of the current state's evaluation
        policy (``mtrl_sparse.videos``), recorded apart from training (its keys, envs and state
        untouched)."""

    def checkpoint(self) -> tuple[Any, dict[str, Any]]:
        """(device state, JSON-ready metadata of this kind) for a checkpoint."""

    def masks(self) -> dict[str, NetworkMasks]:
        """The networks' masks on the host (``mask_stats.state_masks``; empty when dense)."""

    def updates(self) -> int:
        """Gradient steps made so far (read from the device state)."""

    def close(self) -> None:
        """Release the environments."""


class RunGroup(Protocol):
    """Runs advanced in lockstep, as one program where they can share one (``vmap``): the
    ``AgentKind`` contract with one entry per run in every list. The runs share the schedule
    (their configs differ only in what the group allows, e.g. seed and target sparsity), so
    iterations, env steps and update counts are common to all of them."""

    task_names: tuple[str, ...]
    num_envs: int
    budget_env_steps: int
    score_name: str
    array_labels: dict[str, tuple[str, ...]]
    layer_slices: LayerSlices

    def start(self) -> None: ...

    def abstract_states(self) -> list[Any]: ...

    def restore(self, saved: list[tuple[Any, dict[str, Any]]]) -> None:
        """Continue every run from its checkpoint's (state, meta)."""

    def iterate(self, episodes: list[EpisodeTracker]) -> Iteration: ...

    def set_phase(self, phase: int) -> None: ...

    def train_rows(self) -> list[dict[str, Any]]: ...

    def probe_rows(self) -> list[dict[str, Any]]: ...

    def evaluate(self) -> list[dict[str, Any]]: ...

    def record_videos(self, env_step: int, episodes: int) -> list[Iterator[tuple[str, Video]]]:
        """Every run's ``AgentKind.record_videos``."""

    def checkpoint(self) -> list[tuple[Any, dict[str, Any]]]: ...

    def masks(self) -> list[dict[str, NetworkMasks]]: ...

    def updates(self) -> int: ...

    def close(self) -> None: ...


class OneRun:
    """A single run (an ``AgentKind``) as a ``RunGroup`` of one."""

    def __init__(self, kind: AgentKind):
        self.kind = kind
        self.task_names, self.num_envs = kind.task_names, kind.num_envs
        self.budget_env_steps, self.score_name = kind.budget_env_steps, kind.score_name
        self.array_labels, self.layer_slices = kind.array_labels, kind.layer_slices

    def start(self) -> None:
        self.kind.start()

    def abstract_states(self) -> list[Any]:
        return [self.kind.abstract_state()]

    def restore(self, saved: list[tuple[Any, dict[str, Any]]]) -> None:
        (state, meta), = saved
        self.kind.restore(state, meta)

    def iterate(self, episodes: list[EpisodeTracker]) -> Iteration:
        return self.kind.iterate(episodes[0])

    def set_phase(self, phase: int) -> None:
        self.kind.set_phase(phase)

    def train_rows(self) -> list[dict[str, Any]]:
        return [self.kind.train_row()]

    def probe_rows(self) -> list[dict[str, Any]]:
        return [self.kind.probe_row()]

    def evaluate(self) -> list[dict[str, Any]]:
        return [self.kind.evaluate()]

    def record_videos(self, env_step: int, episodes: int) -> list[Iterator[tuple[str, Video]]]:
        return [self.kind.record_videos(env_step, episodes)]

    def checkpoint(self) -> list[tuple[Any, dict[str, Any]]]:
        return [self.kind.checkpoint()]

    def masks(self) -> list[dict[str, NetworkMasks]]:
        return [self.kind.masks()]

    def updates(self) -> int:
        return self.kind.updates()

    def close(self) -> None:
        self.kind.close()
