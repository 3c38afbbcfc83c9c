"""The off-policy agent kind: multi-task SAC with a replay buffer on Meta-World.

One iteration is one vector step (``num_envs`` env steps): act (uniform random actions during
warm-up), step the envs, then ``learn`` (insert the transitions into the replay buffer and, once
warm-up is over, ``updates_per_vector_step`` gradient updates). Envs whose episode ended are reset
at the start of the next iteration, after the run loop has had its chance to checkpoint, so a
checkpoint holds the environments' random state before the reset that a resumed run replays.
Meta-World episodes are synchronised, so every env ends together: that is the boundary where the
run may checkpoint or end (exact for budgets that are multiples of
``num_envs * max_episode_steps``).

Evaluation runs ``eval_episodes_per_task`` deterministic episodes per task on separate envs, always
from the same environment random state (``mtrl_sparse.evaluation.evaluate_success``). Videos
(``record_videos``) play the evaluation envs' first episodes again, one env per task, drawn by
MuJoCo's offscreen renderer (``mtrl_sparse.videos``).

Under the sequential schedule the training envs are ``envs_per_task`` copies of the task being
trained (a one-task Meta-World vector env, rebuilt at every task boundary with the run's seed, the
same layouts as the evaluation envs); the agent's ``phase`` is that task, and the replay buffer
is emptied at the boundary, or with ``--replay cumulative`` keeps every task's transitions
(``sac_learner``). Evaluation covers every task. A checkpoint holds the
phase's env state, so a run resumed at a boundary rebuilds that phase's envs first.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mtrl_sparse.agent_kind import (
    EpisodeTracker,
    Iteration,
    NonFiniteLossError,
    check_finite_env_values,
    eval_env_seed,
)
from mtrl_sparse.agents.networks import per_task_leaves, stacked_head_layers
from mtrl_sparse.agents.replay_buffer import Transition
from mtrl_sparse.agents.sac import make_sac
from mtrl_sparse.config import SACTrainConfig
from mtrl_sparse.envs.base import MultiTaskEnvSpec
from mtrl_sparse.envs.metaworld import MetaWorldVectorEnv
from mtrl_sparse.evaluation import evaluate_success
from mtrl_sparse.mask_stats import NetworkMasks, state_masks
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.run_dir import method_state_row, scalar_row
from mtrl_sparse.sac_learner import LOSS_NAMES, Learner, SACTrainState, make_learner
from mtrl_sparse.videos import Video, metaworld_renderer_problem, record_metaworld


def make_envs(config: SACTrainConfig) -> tuple[MetaWorldVectorEnv, MetaWorldVectorEnv]:
    """Training and evaluation vector envs of ``config`` (the training envs of phase 0 under
    the sequential schedule)."""
    env_cfg = config.env
    eval_env = MetaWorldVectorEnv(env_cfg.benchmark, task=env_cfg.task,
                                  envs_per_task=env_cfg.eval_envs_per_task,
                                  seed=eval_env_seed(config.seed), layout_seed=config.seed,
                                  vector_strategy=env_cfg.vector_strategy,
                                  max_episode_steps=env_cfg.max_episode_steps)
    if config.schedule == "sequential":
        return make_phase_env(config, 0), eval_env
    train_env = MetaWorldVectorEnv(env_cfg.benchmark, task=env_cfg.task,
                                   envs_per_task=env_cfg.envs_per_task, seed=config.seed,
                                   vector_strategy=env_cfg.vector_strategy,
                                   max_episode_steps=env_cfg.max_episode_steps)
    return train_env, eval_env


def make_video_env(config: SACTrainConfig) -> MetaWorldVectorEnv:
    """One env per task with the evaluation envs' layouts and seed (their first copy of each
    task, so the same first episodes), synchronous, so that MuJoCo can draw its scenes."""
    env_cfg = config.env
    return MetaWorldVectorEnv(env_cfg.benchmark, task=env_cfg.task, envs_per_task=1,
                              seed=eval_env_seed(config.seed), layout_seed=config.seed,
                              vector_strategy="sync", max_episode_steps=env_cfg.max_episode_steps)


def make_phase_env(config: SACTrainConfig, phase: int) -> MetaWorldVectorEnv:
    """The training envs of a sequential schedule's ``phase``: ``envs_per_task`` copies of its
    task (an MT1 env of that task, with the layouts of the benchmark's)."""
    env_cfg = config.env
    return MetaWorldVectorEnv("MT1", task=config.task_names()[phase],
                              envs_per_task=env_cfg.envs_per_task, seed=config.seed,
                              vector_strategy=env_cfg.vector_strategy,
                              max_episode_steps=env_cfg.max_episode_steps)


def make_run_learner(config: SACTrainConfig, train_spec: MultiTaskEnvSpec,
                     eval_spec: MultiTaskEnvSpec) -> Learner:
    """The agent of ``config`` (methods resolved per network) wrapped in its jitted learner.

    The heads, replay rings and shapes come from ``eval_spec``, which has every task of the run
    (under the sequential schedule the training envs run one task); the learner acts with the
    task ids of the training envs (``train_spec``), whose number of copies per task may differ
    from the evaluation envs' (``envs_per_task`` against ``eval_envs_per_task``).
    """
    spec = eval_spec
    networks = {name: build_network(
                    dataclasses.replace(settings,
                                        layer_slices=stacked_head_layers(spec.num_tasks),
                                        task_leaves=per_task_leaves(spec.num_tasks)),
                    config.methods, name)
                for name, settings in config.network_methods().items()}
    sac = make_sac(config.sac, spec.num_tasks, spec.obs_shape[0], spec.action_dim,
                   networks["actor"], networks["critic"])
    return make_learner(sac, spec, train_spec.env_task_ids, config.buffer_capacity,
                        config.updates_per_vector_step, config.plasticity,
                        sequential=config.schedule == "sequential",
                        cumulative_replay=config.replay == "cumulative")


class OffPolicyRun:
    """SAC on Meta-World as the run loop drives it (``mtrl_sparse.agent_kind.AgentKind``)."""

    score_name = "eval/success_rate"

    def __init__(self, config: SACTrainConfig):
        self.config = config
        self.env, self.eval_env = make_envs(config)
        spec = self.eval_env.spec
        self.task_names = spec.task_names
        self.num_envs = self.env.spec.num_envs
        self.budget_env_steps = config.total_env_steps
        self.array_labels = {"alpha": spec.task_names}
        self.layer_slices = stacked_head_layers(spec.num_tasks)
        self.learner = make_run_learner(config, self.env.spec, spec)
        self.phase = 0  # the task the training envs run (sequential schedule)
        self.eval_rng_state = self.eval_env.get_rng_state()
        self.compiled: set[bool] = set()  # variants (warm-up or not) whose first call was timed
        self.last_metrics: dict[str, jax.Array] = {}
        self.state: SACTrainState | None = None
        self.obs: np.ndarray | None = None
        self.done: np.ndarray | None = None  # envs to reset before the next step
        self.env_steps = self.updates_done = 0

    def start(self) -> None:
        self.state = self.learner.init(self.config.seed)
        self.obs = self.env.reset()

    def abstract_state(self) -> Any:
        return self.learner.abstract_state()

    def restore(self, state: SACTrainState, meta: dict[str, Any]) -> None:
        self.state = state
        self._use_phase_env(int(state.agent.phase))  # the envs whose state was saved
        self.env.set_rng_state(meta["env_rng_state"])
        self.env_steps, self.updates_done = meta["env_steps"], int(state.agent.step)
        self.done = np.ones(self.num_envs, bool)  # checkpoints are taken at episode boundaries

    def set_phase(self, phase: int) -> None:
        """Enter ``phase`` of the sequential schedule: new training envs of its task, the
        agent's ``phase`` set, the replay buffer emptied (kept with ``--replay cumulative``).
        Nothing happens if already there."""
        if phase == self.phase:
            return
        self._use_phase_env(phase)
        self.obs, self.done = self.env.reset(), None
        buffer = self.state.buffer
        if self.config.replay == "current":
            buffer = buffer.replace(insert_pos=jnp.zeros_like(buffer.insert_pos),
                                    size=jnp.zeros_like(buffer.size))
        self.state = self.state.replace(
            agent=self.state.agent.replace(phase=jnp.asarray(phase, jnp.int32)), buffer=buffer)

    def _use_phase_env(self, phase: int) -> None:
        if phase != self.phase:
            self.env.close()
            self.env, self.phase = make_phase_env(self.config, phase), phase

    def _env_task_ids(self) -> np.ndarray:
        """The task of every training env (the phase's task under the sequential schedule)."""
        if self.config.schedule == "sequential":
            return np.full(self.num_envs, self.phase, np.int32)
        return self.env.spec.env_task_ids

    def iterate(self, episodes: EpisodeTracker) -> Iteration:
        config, env = self.config, self.env
        t0 = time.perf_counter()
        if self.done is not None and self.done.any():
            self.obs = env.reset() if self.done.all() else env.reset_done(self.done)
        warmup = config.in_warmup(self.env_steps)
        t1 = time.perf_counter()
        self.state, actions = self.learner.act(self.state, self.obs, warmup)
        actions = np.asarray(actions)
        if not np.all(np.isfinite(actions)):
            self._check_finite()
            raise NonFiniteLossError(f"non-finite actions at env step {self.env_steps}; "
                                     "run stopped")
        t2 = time.perf_counter()
        step = env.step(actions)
        t3 = time.perf_counter()
        check_finite_env_values(step.obs, step.reward, self._env_task_ids(), self.task_names,
                                self.env_steps + self.num_envs)
        transition = Transition(obs=self.obs, actions=actions, rewards=step.reward,
                                next_obs=step.obs, terminated=step.terminated.astype(np.float32))
        self.state, metrics = self.learner.learn(self.state, transition, warmup)
        self.last_metrics = metrics or self.last_metrics
        agent_seconds = (t2 - t1) + (time.perf_counter() - t3)
        first_call = warmup not in self.compiled
        self.compiled.add(warmup)

        self.env_steps += self.num_envs
        if not warmup:
            self.updates_done += config.updates_per_vector_step
        self.done = step.terminated | step.truncated
        episodes.record(self._env_task_ids(), step.reward, self.done, step.success)
        self.obs = step.obs
        return Iteration(
            env_steps=self.num_envs, updates=self.updates_done,
            at_boundary=bool(self.done.all()),
            seconds={"env": (t1 - t0) + (t3 - t2),
                     "compile" if first_call else "agent": agent_seconds})

    def train_row(self) -> dict[str, Any]:
        self._check_finite()
        agent = self.state.agent
        return {"updates": int(agent.step), **scalar_row(self.last_metrics),
                **method_state_row({"actor": agent.actor, "critic": agent.critic})}

    def probe_row(self) -> dict[str, Any]:
        return scalar_row(self.learner.probe(self.state))

    def evaluate(self) -> dict[str, Any]:
        return evaluate_success(self.learner.greedy_act, self.state.agent, self.eval_env,
                                self.config.env.eval_episodes_per_task, self.eval_rng_state)

    def evaluate_checkpoint(self, state: SACTrainState, env_step: int) -> dict[str, Any]:
        """The evaluation row of a checkpoint's state: the run's own evaluation episodes. The
        checkpoint's state becomes this run's state."""
        del env_step
        self.state = state
        return self.evaluate()

    @staticmethod
    def video_problem(config: SACTrainConfig) -> str | None:
        """Why this run's videos cannot be made (None: they can): no offscreen renderer."""
        del config
        return metaworld_renderer_problem()

    def record_videos(self, env_step: int, episodes: int) -> Iterator[tuple[str, Video]]:
        """(task, video) of every task: ``episodes`` episodes of the evaluation envs' layouts
        (``make_video_env``) played by the greedy policy of the current state, every step
        drawn. Played and drawn now."""
        del env_step  # the greedy policy draws no random numbers
        env = make_video_env(self.config)
        try:
            videos = record_metaworld(self.learner.greedy_act, self.state.agent, env, episodes)
        finally:
            env.close()
        return iter(videos.items())

    def checkpoint(self) -> tuple[SACTrainState, dict[str, Any]]:
        return self.state, {"env_rng_state": self.env.get_rng_state()}

    def masks(self) -> dict[str, NetworkMasks]:
        return state_masks(self.state)

    def updates(self) -> int:
        return int(self.state.agent.step)

    def close(self) -> None:
        self.env.close()
        self.eval_env.close()

    def _check_finite(self) -> None:
        """``NonFiniteLossError`` naming the env step, update and loss of the first non-finite
        loss the learner recorded on the device, if any."""
        update, which = (int(x) for x in jax.device_get(self.state.first_nonfinite))
        if update < 0:
            return
        config = self.config
        vector_step = (update - 1) // config.updates_per_vector_step  # among updating ones
        warmup_vector_steps = -(-config.warmup_env_steps // self.num_envs)  # per phase
        phase_vector_steps = config.phase_env_steps() // self.num_envs
        phase, into = divmod(vector_step, max(phase_vector_steps - warmup_vector_steps, 1))
        env_step = (phase * phase_vector_steps + warmup_vector_steps + into + 1) * self.num_envs
        raise NonFiniteLossError(
            f"non-finite {LOSS_NAMES[which]} at env step {env_step} (update {update}); "
            "run stopped")
