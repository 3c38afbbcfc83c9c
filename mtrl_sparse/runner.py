"""The training loop of a multi-task SAC run, and checkpoint evaluation.

Data flows one way: config -> builders (envs, methods, agent, learner) -> the host loop below,
which steps the environments, calls the jitted ``act`` / ``learn`` and writes the run directory.
The loop never names a sparsity method.

Schedule of one vector step (``num_envs`` env steps): act, step the envs, learn (insert, then
updates once warm-up is over), count episodes; then, at interval crossings, a training metrics row,
an evaluation, and (at the first episode boundary after the interval) a checkpoint. Envs whose
episode ended are reset last, so a checkpoint holds the environments' random state before the reset
that a resumed run replays. A run ends at the first episode boundary at or after
``total_env_steps`` (Meta-World episodes are synchronised, so this is exact for multiples of
``num_envs * max_episode_steps``), with a final evaluation and checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from mtrl_sparse.agents.replay_buffer import Transition
from mtrl_sparse.agents.sac import make_sac
from mtrl_sparse.checkpointing import Checkpointer, has_checkpoint
from mtrl_sparse.config import (
    ConfigError,
    PPOTrainConfig,
    TrainConfig,
    differing_fields,
    validate,
)
from mtrl_sparse.envs.metaworld import MetaWorldVectorEnv
from mtrl_sparse.envs.minigrid import minigrid_task_names
from mtrl_sparse.evaluation import evaluate
from mtrl_sparse.learner import LOSS_NAMES, Learner, TrainState, make_learner
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.run_dir import (
    CHECKPOINT_DIR,
    EVAL_DIR,
    METRICS_FILE,
    TB_DIR,
    MetricsLogger,
    RunDirError,
    check_new_run_dir,
    crossed,
    method_state_row,
    read_config,
    scalar_row,
    truncate_metrics,
    write_config,
)

EVAL_SEED_OFFSET = 1_000_003  # evaluation envs play other episodes of the same tasks


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or Inf; the message names the env step, the update and the loss."""


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    env_steps: int
    updates: int
    task_names: tuple[str, ...]
    final_success: np.ndarray | None
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time per part of the loop: env, agent, compile, eval, logging, checkpoint, total."""
    final_normalized_return: np.ndarray | None = None
    """MiniGrid runs: the final evaluation's normalised return per task."""


def default_run_dir(config: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    methods = config.network_methods()
    label = methods["actor"].name if methods["actor"] == methods["critic"] else "mixed"
    return Path("runs") / f"{config.env.benchmark.lower()}-{label}-s{config.seed}-{stamp}"


def make_envs(config: TrainConfig) -> tuple[MetaWorldVectorEnv, MetaWorldVectorEnv]:
    """Training and evaluation vector envs of ``config``."""
    env_cfg = config.env
    common = dict(task=env_cfg.task, vector_strategy=env_cfg.vector_strategy,
                  max_episode_steps=env_cfg.max_episode_steps)
    train_env = MetaWorldVectorEnv(env_cfg.benchmark, envs_per_task=env_cfg.envs_per_task,
                                   seed=config.seed, **common)
    eval_env = MetaWorldVectorEnv(env_cfg.benchmark, envs_per_task=env_cfg.eval_envs_per_task,
                                  seed=config.seed + EVAL_SEED_OFFSET, layout_seed=config.seed,
                                  **common)
    return train_env, eval_env


def make_run_learner(config: TrainConfig, env: MetaWorldVectorEnv) -> Learner:
    """The agent of ``config`` (methods resolved per network) wrapped in its jitted learner."""
    spec = env.spec
    networks = {name: build_network(settings, config.methods, name)
                for name, settings in config.network_methods().items()}
    sac = make_sac(config.sac, spec.num_tasks, spec.obs_shape[0], spec.action_dim,
                   networks["actor"], networks["critic"])
    return make_learner(sac, spec, config.buffer_capacity, config.updates_per_vector_step,
                        config.plasticity)


def _method_state_row(state: TrainState) -> dict[str, Any]:
    """Scalar leaves of each network's method state, as ``<network>/<method>/<name>``."""
    return method_state_row({"actor": state.agent.actor, "critic": state.agent.critic})


class _TrainingSuccess:
    """Per-task success of training episodes finished since the last metrics row."""

    def __init__(self, spec, saved: dict[str, list[int]] | None = None):
        self.task_ids = spec.env_task_ids
        self.num_tasks = spec.num_tasks
        self.in_episode = np.zeros(spec.num_envs, bool)
        self.episodes = np.array(saved["episodes"]) if saved else np.zeros(spec.num_tasks, int)
        self.successes = np.array(saved["successes"]) if saved else np.zeros(spec.num_tasks, int)

    def record(self, success: np.ndarray, done: np.ndarray) -> None:
        self.in_episode |= success
        np.add.at(self.episodes, self.task_ids[done], 1)
        np.add.at(self.successes, self.task_ids[done], self.in_episode[done].astype(int))
        self.in_episode[done] = False

    def pop_row(self, task_names: tuple[str, ...]) -> dict[str, Any]:
        rates = [s / e if e else None for s, e in zip(self.successes, self.episodes, strict=True)]
        done = self.episodes.sum()
        row = {"train/success_rate": float(self.successes.sum() / done) if done else None}
        row.update({f"train/success/{n}": r for n, r in zip(task_names, rates, strict=True)})
        self.episodes[:] = 0
        self.successes[:] = 0
        return row

    def saved(self) -> dict[str, list[int]]:
        return {"episodes": self.episodes.tolist(), "successes": self.successes.tolist()}


def _eval_row(step: int, task_names, success: np.ndarray, returns: np.ndarray, seconds: float):
    row: dict[str, Any] = {"step": step, "eval/success_rate": float(np.mean(success)),
                           "eval/mean_return": float(np.mean(returns))}
    row.update({f"eval/success/{n}": float(s) for n, s in zip(task_names, success, strict=True)})
    row["time/eval_s"] = seconds
    return row


def _prepare_run_dir(config: TrainConfig, resume: bool, preset: str | None) -> Path:
    """Check (and for a new run create) the run directory; return its path.

    On resume, ``config`` may differ from the stored config only by a raised
    ``total_env_steps``; anything else is a ``ConfigError``.
    """
    if not resume:
        run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
        check_new_run_dir(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(
                f"run dir {run_dir} is not writable ({error.strerror or error})"
            ) from None
        write_config(run_dir, replace(config, run_dir=str(run_dir)), preset)
        return run_dir
    if config.run_dir is None:
        raise RunDirError("--resume needs --run-dir, the directory of the run to continue")
    run_dir = Path(config.run_dir)
    if not has_checkpoint(run_dir / CHECKPOINT_DIR):
        raise RunDirError(f"cannot resume: {run_dir} holds no checkpoint")
    stored = read_config(run_dir)
    differ = [f for f in differing_fields(stored, config)
              if f not in ("total_env_steps", "run_dir", "progress")]
    if differ:
        raise ConfigError(
            f"--resume continues the stored config; these differ from it: {', '.join(differ)} "
            "(only --total-steps may be raised)"
        )
    if config.total_env_steps < stored.total_env_steps:
        raise ConfigError(
            f"--total-steps {config.total_env_steps} is below the run's "
            f"{stored.total_env_steps}; it may only be raised"
        )
    write_config(run_dir, replace(stored, total_env_steps=config.total_env_steps), preset)
    return run_dir


def train(config: TrainConfig, *, resume: bool = False, preset: str | None = None) -> RunResult:
    """Train multi-task SAC as ``config`` says; with ``resume``, continue ``config.run_dir``.

    Raises ``ConfigError`` / ``RunDirError`` (usage errors, before anything is written) and
    ``NonFiniteLossError``.
    """
    validate(config)
    if isinstance(config, PPOTrainConfig):
        return _train_ppo(config, resume, preset)
    run_dir = _prepare_run_dir(config, resume, preset)
    env, eval_env = make_envs(config)
    spec = env.spec
    learner = make_run_learner(config, env)
    checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR, config.keep_checkpoints)
    eval_rng_state = eval_env.get_rng_state()

    if resume:
        start_step = checkpointer.latest_step()
        state, meta = checkpointer.restore(start_step, learner.abstract_state())
        if start_step >= config.total_env_steps:  # the run is complete: nothing to add
            for resource in (checkpointer, env, eval_env):
                resource.close()
            last_eval = meta["last_eval"]
            return RunResult(run_dir=run_dir, env_steps=start_step,
                             updates=int(state.agent.step), task_names=spec.task_names,
                             final_success=None if last_eval is None else np.asarray(last_eval))
        truncate_metrics(run_dir, start_step)
        env.set_rng_state(meta["env_rng_state"])
        successes = _TrainingSuccess(spec, meta["train_success"])
        last_eval = meta["last_eval"]
    else:
        start_step, state, meta = 0, learner.init(config.seed), None
        successes = _TrainingSuccess(spec)
        last_eval = None
    env_steps = start_step
    logger = MetricsLogger(run_dir, {"alpha": spec.task_names}, purge_step=start_step or None)
    seconds = dict.fromkeys(("env", "agent", "compile", "eval", "logging", "checkpoint"), 0.0)
    compiled: set[bool] = set()  # variants (warm-up or not) whose first call has been timed
    t_start = time.perf_counter()
    t_interval, steps_interval_start = t_start, env_steps
    updates_interval_start = updates_done = int(state.agent.step)
    last_metrics: dict[str, jax.Array] = {}
    checkpoint_due = False

    bar = tqdm(total=config.total_env_steps, initial=env_steps, unit="step", unit_scale=True,
               dynamic_ncols=True, disable=not config.progress, desc="env steps")
    postfix: dict[str, str] = {}
    obs = env.reset()
    try:
        while True:
            warmup = env_steps < config.warmup_env_steps
            t0 = time.perf_counter()
            state, actions = learner.act(state, obs, warmup)
            actions = np.asarray(actions)
            if not np.all(np.isfinite(actions)):
                _check_finite(state, config, spec.num_envs)
                raise NonFiniteLossError(f"non-finite actions at env step {env_steps}; run stopped")
            t1 = time.perf_counter()
            step = env.step(actions)
            t2 = time.perf_counter()
            transition = Transition(obs=obs, actions=actions, rewards=step.reward,
                                    next_obs=step.obs,
                                    terminated=step.terminated.astype(np.float32))
            state, metrics = learner.learn(state, transition, warmup)
            last_metrics = metrics or last_metrics
            seconds["env"] += t2 - t1
            first_call = warmup not in compiled
            seconds["compile" if first_call else "agent"] += (t1 - t0) + (time.perf_counter() - t2)
            compiled.add(warmup)

            before, env_steps = env_steps, env_steps + spec.num_envs
            updates_before = updates_done
            if not warmup:
                updates_done += config.updates_per_vector_step
            done = step.terminated | step.truncated
            successes.record(step.success, done)
            bar.update(spec.num_envs)
            at_boundary = bool(done.all())
            finished = env_steps >= config.total_env_steps and at_boundary

            t0 = time.perf_counter()
            if crossed(env_steps, before, config.log_every_env_steps) or finished:
                _check_finite(state, config, spec.num_envs)
                now = time.perf_counter()
                updates = int(state.agent.step)
                interval_s = max(now - t_interval, 1e-9)
                row = {"step": env_steps, "updates": updates, **scalar_row(last_metrics),
                       **_method_state_row(state),
                       **successes.pop_row(spec.task_names),
                       "time/env_steps_per_s": (env_steps - steps_interval_start) / interval_s,
                       "time/updates_per_s": (updates - updates_interval_start) / interval_s,
                       "time/elapsed_s": now - t_start}
                logger.write(row)
                postfix["updates/s"] = f"{row['time/updates_per_s']:.1f}"
                bar.set_postfix(postfix)
                t_interval, steps_interval_start, updates_interval_start = now, env_steps, updates
            every = config.plasticity.every_updates
            if every and crossed(updates_done, updates_before, every):
                logger.write({"step": env_steps, **scalar_row(learner.probe(state))})
            seconds["logging"] += time.perf_counter() - t0

            if crossed(env_steps, before, config.eval_every_env_steps) or finished:
                t0 = time.perf_counter()
                success, returns = evaluate(learner.greedy_act, state.agent, eval_env,
                                            config.env.eval_episodes_per_task, eval_rng_state)
                seconds["eval"] += time.perf_counter() - t0
                logger.write(_eval_row(env_steps, spec.task_names, success, returns,
                                       time.perf_counter() - t0))
                last_eval = success.tolist()
                postfix["eval success"] = f"{np.mean(last_eval):.2f}"
                bar.set_postfix(postfix)

            checkpoint_due |= crossed(env_steps, before, config.checkpoint_every_env_steps)
            if (checkpoint_due and at_boundary) or finished:
                t0 = time.perf_counter()
                checkpointer.save(env_steps, state, {
                    "env_steps": env_steps,
                    "env_rng_state": env.get_rng_state(),
                    "train_success": successes.saved(),
                    "last_eval": last_eval,
                })
                seconds["checkpoint"] += time.perf_counter() - t0
                checkpoint_due = False
            if finished:
                break
            if done.any():
                obs = env.reset() if at_boundary else env.reset_done(done)
            else:
                obs = step.obs
    finally:
        bar.close()
        logger.close()
        checkpointer.close()
        env.close()
        eval_env.close()
    seconds["total"] = time.perf_counter() - t_start
    return RunResult(
        run_dir=run_dir, env_steps=env_steps, updates=int(state.agent.step),
        task_names=spec.task_names,
        final_success=None if last_eval is None else np.asarray(last_eval), seconds=seconds,
    )


def _train_ppo(config: PPOTrainConfig, resume: bool, preset: str | None) -> RunResult:
    """Multi-task PPO on MiniGrid (``mtrl_sparse.ppo_runner``)."""
    from mtrl_sparse.ppo_runner import train_ppo

    run_dir = _prepare_run_dir(config, resume, preset)
    try:
        summary = train_ppo(config, run_dir, resume)
    except FloatingPointError as error:
        raise NonFiniteLossError(str(error)) from None
    return _ppo_result(run_dir, summary["env_steps"], int(summary["state"].actor_step),
                       summary["task_names"], summary["last_eval"], summary["seconds"])


def _ppo_result(run_dir: Path, env_steps: int, updates: int, task_names: tuple[str, ...],
                eval_row: dict[str, float], seconds: dict[str, float] | None = None) -> RunResult:
    """A PPO run's ``RunResult``: per-task success and normalised return of an evaluation row."""
    return RunResult(
        run_dir=run_dir, env_steps=env_steps, updates=updates, task_names=task_names,
        final_success=np.array([eval_row[f"eval/success/{t}"] for t in task_names]),
        seconds=seconds or {},
        final_normalized_return=np.array([eval_row[f"eval/normalized_return/{t}"]
                                          for t in task_names]),
    )


def _check_finite(state: TrainState, config: TrainConfig, num_envs: int) -> None:
    update, which = (int(x) for x in jax.device_get(state.first_nonfinite))
    if update < 0:
        return
    vector_step = (update - 1) // config.updates_per_vector_step
    warmup_vector_steps = -(-config.warmup_env_steps // num_envs)
    env_step = (warmup_vector_steps + vector_step + 1) * num_envs
    raise NonFiniteLossError(
        f"non-finite {LOSS_NAMES[which]} at env step {env_step} (update {update}); run stopped"
    )


def evaluate_run(run_dir: Path, step: int | None = None) -> tuple[int, RunResult]:
    """Evaluate the checkpoint of ``run_dir`` at env step ``step`` (default: the latest).

    Writes ``eval/step_<N>.json`` in the run directory and returns (step, result).
    """
    config = read_config(run_dir)
    checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR, config.keep_checkpoints)
    available = checkpointer.steps()
    if not available:
        raise RunDirError(f"{run_dir} holds no checkpoint to evaluate")
    if step is None:
        step = available[-1]
    if step not in available:
        raise RunDirError(
            f"no checkpoint at step {step} in {run_dir}; available: "
            f"{', '.join(map(str, available))}"
        )
    if isinstance(config, PPOTrainConfig):
        return step, _evaluate_ppo_run(run_dir, config, checkpointer, step)
    env, eval_env = make_envs(config)
    try:
        learner = make_run_learner(config, env)
        state, _ = checkpointer.restore(step, learner.abstract_state())
        success, returns = evaluate(learner.greedy_act, state.agent, eval_env,
                                    config.env.eval_episodes_per_task, eval_env.get_rng_state())
    finally:
        checkpointer.close()
        env.close()
        eval_env.close()
    out = run_dir / EVAL_DIR
    out.mkdir(exist_ok=True)
    result = {"step": step, "success_rate": float(np.mean(success)),
              "success": dict(zip(env.spec.task_names, success.tolist(), strict=True)),
              "mean_return": dict(zip(env.spec.task_names, returns.tolist(), strict=True))}
    (out / f"step_{step}.json").write_text(json.dumps(result, indent=2))
    return step, RunResult(run_dir=run_dir, env_steps=step, updates=int(state.agent.step),
                           task_names=env.spec.task_names, final_success=success)


def _evaluate_ppo_run(run_dir: Path, config: PPOTrainConfig, checkpointer: Checkpointer,
                      step: int) -> RunResult:
    from mtrl_sparse.ppo_runner import evaluate_ppo_checkpoint

    try:
        row, updates = evaluate_ppo_checkpoint(config, checkpointer, step)
    finally:
        checkpointer.close()
    out = run_dir / EVAL_DIR
    out.mkdir(exist_ok=True)
    (out / f"step_{step}.json").write_text(json.dumps({"step": step, **row}, indent=2))
    return _ppo_result(run_dir, step, updates, minigrid_task_names(config.env.benchmark), row)


__all__ = ["train", "evaluate_run", "RunResult", "NonFiniteLossError", "METRICS_FILE", "TB_DIR"]
