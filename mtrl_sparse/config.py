"""Experiment configuration: frozen dataclasses, their validation, and JSON round trips.

Every value of a run is a field here (the CLI is generated from these classes), and every field
name that counts something says its unit: ``env_steps`` are environment transitions summed over all
parallel envs; ``updates`` are gradient steps of a network (see docs/pages/design.md, Conventions).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import typing
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar, Literal

from packaging.version import Version

from mtrl_sparse.agents.cnn import cnn_feature_size
from mtrl_sparse.agents.ppo import PPOConfig, updates_per_rollout
from mtrl_sparse.agents.sac import SACConfig
from mtrl_sparse.envs.metaworld import METAWORLD_BENCHMARKS, metaworld_task_names
from mtrl_sparse.envs.minigrid import (
    FARAMA_INSTALL,
    MINIGRID_BENCHMARKS,
    farama_minigrid_installed,
    minigrid_task_names,
)
from mtrl_sparse.envs.minigrid import OBS_SHAPE as MINIGRID_OBS_SHAPE
from mtrl_sparse.methods.base import MethodError, NetworkMethodSettings
from mtrl_sparse.methods.network import check_network
from mtrl_sparse.methods.registry import MethodOptions, convert_options, method_options_class


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line naming what is accepted."""


@dataclass(frozen=True)
class EnvConfig:
    """Which benchmark to train on and how its environments are vectorised."""

    benchmark: Literal["MT1", "MT10", "MT50", "CW10"] = "MT10"
    """Meta-World benchmark: MT10 and MT50 run one env per task; MT1 runs one task; CW10 the
    ten tasks of the Continual World sequence (usually with --schedule sequential)."""
    task: str | None = None
    """MT1 only: the Meta-World task name (e.g. reach-v3)."""
    envs_per_task: int = 1
    """Training env copies of each task (env steps per vector step = tasks x copies)."""
    vector_strategy: Literal["sync", "async"] = "sync"
    """Gymnasium vector env strategy: sync (one process) or async (one process per env)."""
    max_episode_steps: int = 500
    """Time limit of an episode in env steps of one env (Meta-World's is 500)."""
    eval_envs_per_task: int = 10
    """Evaluation env copies of each task, stepped together to run episodes in parallel."""
    eval_episodes_per_task: int = 50
    """Evaluation episodes per task (deterministic policy)."""


@dataclass(frozen=True)
class PlasticityConfig:
    """When and how the plasticity metrics are measured (mtrl_sparse.plasticity)."""

    every_updates: int = 50_000
    """Measure every this many updates (0: never); rows carry plasticity/... metrics."""
    batch_size: int = 1024
    """Most recent transitions measured on, shared equally by the tasks."""
    dormant_tau: float = 0.001
    """A neuron is dormant when its ReDo score is <= dormant_tau."""
    srank_delta: float = 0.01
    """Effective rank: smallest k whose singular values hold a 1 - delta share."""


@dataclass(frozen=True)
class NetworkMethodConfig:
    """Per-network override of the top-level method flags."""

    method: str | None = None
    """Method of this network; None: the top-level --method."""
    sparsity: float | None = None
    """Final target sparsity of this network; None: the top-level --sparsity."""
    interval_scale: float = 1.0
    """Multiplies every interval of this network's methods (--methods.*.*-every-updates, in
    updates of this network), e.g. 1/56 for the PPO critic, which makes 1 update per rollout
    against the actor's 56, so that both networks prune on the same env steps."""


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases tracking (the wandb extra): every metrics row, the resolved config, the
    run directory and the code version, in one W&B run per run directory (resumed with it).
    WANDB_MODE=offline tracks without a network (upload later with wandb sync)."""

    track: bool = False
    """Log the run to W&B (short flag --track); --wandb.project turns it on too."""
    project: str | None = None
    """W&B project; None: $WANDB_PROJECT, else mtrl-sparse."""
    entity: str | None = None
    """W&B entity (a user or team); None: the default entity of the W&B login."""
    group: str | None = None
    """W&B group of the run; a sweep groups its runs under its directory's name."""
    name: str | None = None
    """W&B display name of the run; None: the run directory's name (a sweep names each run
    <method>[-sparsity<S>]-seed<N>)."""
    tags: tuple[str, ...] = ()
    """W&B tags of the run (each 1 to 64 characters)."""

    def enabled(self) -> bool:
        """Whether the run is tracked: --track or --wandb.project."""
        return self.track or self.project is not None


WANDB_INSTALL = "pip install 'mtrl-sparse[wandb]'"
WANDB_MIN_VERSION = "0.19.10"
"""The first wandb that keeps several runs open in one process (``reinit="create_new"``), which
a vmapped group of runs needs."""


@dataclass(frozen=True)
class RunConfig:
    """What every run has, whatever its agent: budget, seed, methods, intervals, run directory.

    Each agent's config extends it (``SACTrainConfig`` for SAC on Meta-World) and says how many
    updates each of its networks makes over the run (``total_updates``), which schedules read.
    """

    AGENT: ClassVar[str] = ""
    NETWORKS: ClassVar[tuple[str, ...]] = ("actor", "critic")

    total_env_steps: int = 20_000_000
    """Run budget in env steps (transitions summed over all training envs)."""
    seed: int = 0
    """Seed of network init, masks, exploration, replay sampling and environments."""
    method: str = "dense"
    """Method of every network (see `mtrl-sparse methods`); a network's own flag overrides it."""
    sparsity: float = 0.0
    """Final target sparsity of every network, in [0, 1); 0 for dense."""
    distribution: Literal["uniform", "erk"] = "erk"
    """Per-layer sparsity distribution of sparse methods."""
    actor: NetworkMethodConfig = field(default_factory=NetworkMethodConfig)
    """Method override for the actor."""
    critic: NetworkMethodConfig = field(default_factory=NetworkMethodConfig)
    """Method override for the critic(s)."""
    methods: MethodOptions = field(default_factory=MethodOptions)
    """Hyperparameters of the sparsity and plasticity methods (used where a network runs them).
    Its type is the options class of the registered methods: see ``config_class``."""
    plasticity: PlasticityConfig = field(default_factory=PlasticityConfig)
    """Plasticity metrics: dormant neurons, effective rank, Fisher trace, norms, sparsity."""
    eval_every_env_steps: int = 200_000
    """Evaluate every this many env steps (and always at the end)."""
    log_every_env_steps: int = 10_000
    """Write a training metrics row every this many env steps."""
    checkpoint_every_env_steps: int = 500_000
    """Checkpoint at the first episode boundary after every this many env steps (and at the end)."""
    keep_checkpoints: int = 3
    """How many of the most recent checkpoints to keep."""
    video_every_env_steps: int = 0
    """Videos of the evaluation policy (one episode per task: a GIF per task in
    <run-dir>/videos/step_<S>/ and an image strip per task in TensorBoard) at the evaluations
    that cross a multiple of this many env steps; 0: none. Meta-World needs an offscreen OpenGL
    backend (MUJOCO_GL=egl or osmesa). Never changes the run's numbers."""
    run_dir: str | None = None
    """Run directory; None: runs/<benchmark>-<method>-s<seed>-<timestamp>."""
    progress: bool = True
    """Show a progress bar."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases tracking (the wandb extra): it observes the run, never changing its
    numbers; a resumed run continues its W&B run. WANDB_MODE=offline tracks without a network
    (upload later with wandb sync)."""
    schedule: Literal["multitask", "sequential"] = "multitask"
    """multitask: every task throughout the run (the paper's setting); sequential: the tasks one
    after another in the benchmark's order, the budget split equally among them (a phase per
    task; every task keeps its head; evaluations on all tasks at every task boundary too)."""
    replay: Literal["current", "cumulative"] = "current"
    """Sequential schedule, off-policy agents (SAC): current (the replay buffer holds the task
    being trained and is emptied at every boundary: Continual World's protocol) or cumulative
    (it keeps every task's transitions seen so far, a ring of --buffer-capacity / tasks per
    task, and each batch draws uniformly from all of them: the cumulative megabatches of APP's
    code). PPO learns on-policy from its current rollouts and accepts current only."""

    compute: Literal["dense", "sparse", "auto"] = "dense"
    """How masked layers compute: dense (masked weights in XLA's dense matmul); sparse (the
    compiled sparse kernels, computing with the active weights only, for every kernel whose
    target density is at most --compute-crossover; for masks of fixed density: static, SET,
    RigL); auto (the same kernels, each switching to them at run time once its density falls
    to the crossover: for GMP and APP, whose masks start dense). Same numbers up to float32
    summation order; without the compiled extension, sparse and auto run densely."""
    compute_crossover: float = 0.1
    """The density at or below which a kernel computes sparsely (the measured crossover of
    bench/sparse_compute.py on a 2-core CPU)."""

    def total_updates(self, network: str) -> int:
        """Gradient updates of ``network`` over the whole run (at least 1)."""
        raise NotImplementedError

    def batch_size(self, network: str) -> int:
        """Samples in one gradient update of ``network``."""
        raise NotImplementedError

    def task_names(self) -> tuple[str, ...]:
        """The benchmark's tasks, in order (a task id indexes them)."""
        raise NotImplementedError

    def phases(self) -> int:
        """Phases of the schedule: one per task when sequential, else 1."""
        return len(self.task_names()) if self.schedule == "sequential" else 1

    def phase_env_steps(self) -> int:
        """Env steps of each phase (the whole budget for the multi-task schedule)."""
        return self.total_env_steps // self.phases()

    def phase_at(self, env_steps: int) -> int:
        """The phase that trains from ``env_steps`` on (the last one past the budget)."""
        return min(env_steps // self.phase_env_steps(), self.phases() - 1)

    def compute_density(self) -> float | None:
        """The density limit of sparse compute (``NetworkMethodSettings.compute_density``)."""
        return {"dense": None, "sparse": 1.0, "auto": self.compute_crossover}[self.compute]

    def network_methods(self) -> dict[str, NetworkMethodSettings]:
        """The resolved method of each network: ``{"actor": ..., "critic": ...}``."""
        overrides = {"actor": self.actor, "critic": self.critic}
        return {
            name: NetworkMethodSettings(
                name=overrides[name].method if overrides[name].method is not None
                else self.method,
                sparsity=overrides[name].sparsity if overrides[name].sparsity is not None
                else self.sparsity,
                distribution=self.distribution,
                total_updates=self.total_updates(name),
                interval_scale=overrides[name].interval_scale,
                phases=self.phases(),
                compute_density=self.compute_density(),
                compute_crossover=self.compute_crossover,
                batch_size=self.batch_size(name),
            )
            for name in self.NETWORKS
        }


@dataclass(frozen=True)
class SACTrainConfig(RunConfig):
    """A multi-task SAC run on Meta-World, with a sparsity method per network."""

    AGENT: ClassVar[str] = "sac"

    env: EnvConfig = field(default_factory=EnvConfig)
    """Environment settings."""
    sac: SACConfig = field(default_factory=SACConfig)
    """Agent hyperparameters."""
    warmup_env_steps: int = 40_000
    """Env steps of uniformly random actions before the first update; under the sequential
    schedule at the start of every task (Continual World's SAC explores each new task randomly
    before it updates on that task's emptied buffer)."""
    updates_per_vector_step: int = 1
    """Gradient updates after each vector step once warm-up is over."""
    buffer_capacity: int = 1_000_000
    """Replay capacity in transitions, shared equally by the tasks."""

    def vector_env_steps(self) -> int:
        """Env steps of one vector step: every task's copies, or under the sequential schedule
        the copies of the task being trained."""
        tasks = 1 if self.schedule == "sequential" else len(self.task_names())
        return tasks * self.env.envs_per_task

    def total_updates(self, network: str = "actor") -> int:
        """Gradient updates of each network over the whole run (at least 1); SAC's actor and
        critics update together."""
        del network
        vector_steps = (max(self.phase_env_steps() - self.warmup_env_steps, 0)
                        // self.vector_env_steps()) * self.phases()
        return max(1, vector_steps * self.updates_per_vector_step)

    def batch_size(self, network: str = "actor") -> int:
        """SAC's actor and critics update on the same batch."""
        del network
        return self.sac.batch_size

    def in_warmup(self, env_steps: int) -> bool:
        """Whether the vector step starting at ``env_steps`` is in a warm-up: the run's first
        ``warmup_env_steps``, or each phase's under the sequential schedule."""
        into = env_steps % self.phase_env_steps() if self.schedule == "sequential" else env_steps
        return into < self.warmup_env_steps

    def task_names(self) -> tuple[str, ...]:
        return tuple(metaworld_task_names(self.env.benchmark, self.env.task))


@dataclass(frozen=True)
class MiniGridEnvConfig:
    """Which MiniGrid task set to train on and how it is vectorised."""

    benchmark: Literal["MT3", "MT5", "MT7"] = "MT3"
    """MiniGrid task set of the reference paper; a task is drawn uniformly per episode."""
    task: str | None = None
    """One task of the benchmark (its env id, e.g. MiniGrid-DoorKey-6x6-v0) to train and
    evaluate alone: a single-task run, such as a sequential schedule's forward-transfer
    reference; None: all of the benchmark's tasks."""
    num_envs: int = 8
    """Training env workers (a rollout of rollout-env-steps is split evenly among them)."""
    backend: Literal["farama", "jax"] = "farama"
    """farama (Farama's minigrid stepped on the host; the reference) or jax (the same tasks as
    JAX functions: the rollout and the update run as one compiled program)."""
    vector_strategy: Literal["sync", "async"] = "sync"
    """farama backend: sync (this process; the faster on 2 cores) or async (worker processes)."""
    eval_envs: int = 8
    """Evaluation env workers, stepped together."""
    eval_episodes_per_task: int = 25
    """Evaluation episodes per task: the first this many started on each task count."""
    eval_deterministic: bool = False
    """Evaluate with the most likely action instead of a sampled one (greedy MiniGrid policies
    can loop until the time limit)."""


@dataclass(frozen=True)
class PPOTrainConfig(RunConfig):
    """A multi-task PPO run on a MiniGrid task set, with a sparsity method per network."""

    AGENT: ClassVar[str] = "ppo"

    total_env_steps: int = 400_000
    """Run budget in env steps (transitions summed over all training envs)."""
    eval_every_env_steps: int = 100_000
    """Evaluate every this many env steps (and always at the end)."""
    log_every_env_steps: int = 10_000
    """Write a training metrics row after the first rollout past every this many env steps."""
    env: MiniGridEnvConfig = field(default_factory=MiniGridEnvConfig)
    """Environment settings."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """Agent hyperparameters (Table 2)."""

    def rollouts(self) -> int:
        """Rollouts (update calls) over the run: whole rollouts of the budget, at least 1."""
        return max(1, self.total_env_steps // self.ppo.rollout_env_steps)

    def total_updates(self, network: str) -> int:
        """Minibatch gradient steps of ``network`` over the whole run."""
        return max(1, self.rollouts() * updates_per_rollout(self.ppo)[network])

    def batch_size(self, network: str) -> int:
        """The actor's and the critic's minibatch sizes."""
        return {"actor": self.ppo.policy_batch_size, "critic": self.ppo.critic_batch_size}[network]

    def task_names(self) -> tuple[str, ...]:
        return minigrid_task_names(self.env.benchmark, self.env.task)


CONFIG_CLASSES: dict[str, type[RunConfig]] = {SACTrainConfig.AGENT: SACTrainConfig,
                                              PPOTrainConfig.AGENT: PPOTrainConfig}
"""Config class of each agent, by the name ``config.json`` stores (with the built-in methods'
options; ``config_class`` gives the class for the methods registered now)."""


def config_class(cls: type[RunConfig]) -> type[RunConfig]:
    """The config class of ``cls``'s agent whose ``methods`` field holds the options of the
    methods registered now (``method_options_class()``): ``cls``'s agent class itself while only
    the built-in methods are registered, else a subclass of it that differs only in the type of
    ``methods`` (memoised, so one registry state gives one class). The CLI generates its flags
    from this class, so a method registered after import gets its ``--methods.NAME.*`` flags."""
    base = CONFIG_CLASSES[cls.AGENT]
    options = method_options_class()
    if options is MethodOptions:
        return base
    return _with_options(base, options)


@functools.cache
def _with_options(base: type[RunConfig], options: type) -> type[RunConfig]:
    cls = dataclasses.make_dataclass(
        base.__name__, [("methods", options, field(default_factory=options))], bases=(base,),
        frozen=True)
    cls.__module__, cls.__doc__ = base.__module__, base.__doc__
    return cls


def with_current_methods(config: RunConfig) -> RunConfig:
    """``config`` as an instance of ``config_class(type(config))``: every field kept, the method
    options converted (registered methods it lacks get their defaults)."""
    cls = config_class(type(config))
    if type(config) is cls:
        return config
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    values["methods"] = convert_options(config.methods, method_options_class())
    return cls(**values)


def validate(config: RunConfig) -> None:
    """Raise ``ConfigError`` (one line) for the first problem found."""
    check_positive({
        "total_env_steps": config.total_env_steps,
        "eval_every_env_steps": config.eval_every_env_steps,
        "log_every_env_steps": config.log_every_env_steps,
        "checkpoint_every_env_steps": config.checkpoint_every_env_steps,
        "keep_checkpoints": config.keep_checkpoints,
    })
    if not isinstance(config.seed, int) or config.seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer; got {config.seed}")
    if config.video_every_env_steps < 0:
        raise ConfigError(f"--video-every-env-steps must be 0 (no videos) or a positive integer; "
                          f"got {config.video_every_env_steps}")
    if isinstance(config, SACTrainConfig):
        _validate_sac(config)
    elif isinstance(config, PPOTrainConfig):
        _validate_ppo(config)
    _validate_methods(config)
    _validate_wandb(config.wandb)
    if isinstance(config, PPOTrainConfig):  # last: what the config asks is checked first
        _check_farama_installed(config)
    if config.wandb.enabled():
        _check_wandb_installed()


def _check_farama_installed(config: PPOTrainConfig) -> None:
    if config.env.backend == "farama" and not farama_minigrid_installed():
        raise ConfigError(f"--env.backend farama needs Farama's minigrid, which is not installed "
                          f"({FARAMA_INSTALL}); accepted without it: --env.backend jax")


WANDB_FORBIDDEN = "/\\#?%:"
"""Characters W&B refuses in a project name."""


def _validate_wandb(wandb: WandbConfig) -> None:
    """The W&B options name a project W&B accepts, hold no empty names or tags, and come with
    tracking turned on (``--track`` or ``--wandb.project``)."""
    named = {"project": wandb.project, "entity": wandb.entity, "group": wandb.group,
             "name": wandb.name}
    for option, value in named.items():
        if value is not None and not value.strip():
            raise ConfigError(f"--wandb.{option} is empty; accepted: a non-empty name")
    if wandb.project is not None and any(c in WANDB_FORBIDDEN for c in wandb.project):
        raise ConfigError(f"--wandb.project {wandb.project!r}: W&B refuses the characters "
                          f"{' '.join(WANDB_FORBIDDEN)} in a project name")
    bad_tags = [tag for tag in wandb.tags if not 1 <= len(tag.strip()) <= 64]
    if bad_tags:
        raise ConfigError(f"--wandb.tags {bad_tags[0]!r}: accepted: tags of 1 to 64 characters")
    given = [f"--wandb.{option}" for option in ("entity", "group", "name")
             if named[option] is not None] + (["--wandb.tags"] if wandb.tags else [])
    if given and not wandb.enabled():
        raise ConfigError(f"{', '.join(given)} without tracking: add --track (or "
                          "--wandb.project P) to log the run to W&B")


def _check_wandb_installed() -> None:
    """``ConfigError`` unless a wandb of at least ``WANDB_MIN_VERSION`` is importable."""
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"--track needs the wandb package, which is not installed "
                          f"({WANDB_INSTALL})")
    installed = metadata.version("wandb")
    if Version(installed) < Version(WANDB_MIN_VERSION):
        raise ConfigError(f"--track needs wandb >= {WANDB_MIN_VERSION} (several runs in one "
                          f"process); {installed} is installed ({WANDB_INSTALL})")


def check_positive(values: dict[str, int]) -> None:
    """``ConfigError`` naming the first flag whose value is not a positive integer."""
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer; got {value}")


def _validate_methods(config: RunConfig) -> None:
    """Each network's method configuration (``check_network``: names, sparsity, distribution,
    options, interval scale, the methods' run-level checks); the plasticity probe."""
    for network, settings in config.network_methods().items():
        try:
            check_network(settings, config.methods, network)
        except MethodError as error:
            raise ConfigError(str(error)) from None
    if not 0.0 < config.compute_crossover <= 1.0:
        raise ConfigError(f"--compute-crossover must be a density in (0, 1]; got "
                          f"{config.compute_crossover}")
    if config.plasticity.every_updates < 0 or config.plasticity.batch_size <= 0:
        raise ConfigError("--plasticity.every-updates must be >= 0 and --plasticity.batch-size > 0")


def _validate_sac(config: SACTrainConfig) -> None:
    env = config.env
    if env.benchmark not in METAWORLD_BENCHMARKS:
        raise ConfigError(
            f"unknown benchmark {env.benchmark!r}; accepted: {', '.join(METAWORLD_BENCHMARKS)}"
        )
    if env.benchmark == "MT1" and env.task is None:
        raise ConfigError("benchmark MT1 needs --env.task (a Meta-World task name, e.g. reach-v3)")
    if env.benchmark != "MT1" and env.task is not None:
        raise ConfigError(
            f"--env.task is for MT1 only; benchmark {env.benchmark} has its own tasks"
        )
    try:
        num_tasks = len(metaworld_task_names(env.benchmark, env.task))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check_positive({
        "env.envs_per_task": env.envs_per_task,
        "env.max_episode_steps": env.max_episode_steps,
        "env.eval_envs_per_task": env.eval_envs_per_task,
        "env.eval_episodes_per_task": env.eval_episodes_per_task,
        "sac.batch_size": config.sac.batch_size,
        "updates_per_vector_step": config.updates_per_vector_step,
        "buffer_capacity": config.buffer_capacity,
    })
    if config.warmup_env_steps < 0:
        raise ConfigError(f"--warmup-env-steps must be >= 0; got {config.warmup_env_steps}")
    if config.schedule == "sequential":
        _validate_sequential_sac(config, num_tasks)
    elif config.replay != "current":
        raise ConfigError(f"--replay {config.replay} is for --schedule sequential (a multi-task "
                          "replay buffer already holds every task); accepted: --replay current")
    elif config.sac.batch_size % num_tasks:
        raise ConfigError(
            f"--sac.batch-size {config.sac.batch_size} is not divisible by the {num_tasks} tasks "
            f"of {env.benchmark}; accepted: multiples of {num_tasks}"
        )
    if config.buffer_capacity < num_tasks * env.envs_per_task:
        raise ConfigError(
            f"--buffer-capacity {config.buffer_capacity} is below one vector step "
            f"({num_tasks * env.envs_per_task} transitions)"
        )
    if not config.sac.hidden_sizes or min(config.sac.hidden_sizes) <= 0:
        raise ConfigError("--sac.hidden-sizes needs one or more positive widths")
    sac = config.sac
    if sac.arch != "mh" and len(sac.hidden_sizes) < 2:
        raise ConfigError(f"--arch {sac.arch} needs two or more --sac.hidden-sizes (each "
                          f"expert's last layer is its linear output); got {sac.hidden_sizes}")
    _validate_experts(sac.arch, sac.num_experts, sac.hidden_sizes[-1],
                      "the last --sac.hidden-sizes width")


def _validate_experts(arch: str, num_experts: int, representation_size: int, what: str) -> None:
    """``--num-experts`` is a count >= 1 (1 is accepted: a single expert that the task encoder
    scales per task); MOORE cannot orthonormalise more experts than the representation has
    dimensions (``representation_size``, described by ``what``)."""
    if num_experts < 1:
        raise ConfigError(f"--num-experts must be >= 1 (1 is accepted: one expert scaled per "
                          f"task); got {num_experts}")
    if arch == "moore" and num_experts > representation_size:
        raise ConfigError(f"--arch moore needs --num-experts <= {representation_size} ({what}: "
                          f"no more orthonormal experts than dimensions); got {num_experts}")


def _validate_ppo(config: PPOTrainConfig) -> None:
    env, ppo = config.env, config.ppo
    if env.benchmark not in MINIGRID_BENCHMARKS:
        raise ConfigError(f"unknown MiniGrid benchmark {env.benchmark!r}; accepted: "
                          f"{', '.join(MINIGRID_BENCHMARKS)}")
    if env.task is not None and env.task not in MINIGRID_BENCHMARKS[env.benchmark]:
        raise ConfigError(f"--env.task {env.task} is not a task of MiniGrid {env.benchmark}; "
                          f"accepted: {', '.join(MINIGRID_BENCHMARKS[env.benchmark])}")
    check_positive({
        "env.num_envs": env.num_envs,
        "env.eval_envs": env.eval_envs,
        "env.eval_episodes_per_task": env.eval_episodes_per_task,
        "ppo.rollout_env_steps": ppo.rollout_env_steps,
        "ppo.policy_epochs": ppo.policy_epochs,
        "ppo.critic_epochs": ppo.critic_epochs,
    })
    if ppo.rollout_env_steps % env.num_envs:
        raise ConfigError(f"--ppo.rollout-env-steps {ppo.rollout_env_steps} is not divisible by "
                          f"--env.num-envs {env.num_envs}; accepted: divisors of it")
    for name, size in (("policy", ppo.policy_batch_size), ("critic", ppo.critic_batch_size)):
        if not 0 < size <= ppo.rollout_env_steps:
            raise ConfigError(f"--ppo.{name}-batch-size {size} must be in "
                              f"[1, {ppo.rollout_env_steps}] (--ppo.rollout-env-steps)")
    if config.total_env_steps < ppo.rollout_env_steps:
        raise ConfigError(f"--total-env-steps {config.total_env_steps} is below one rollout "
                          f"({ppo.rollout_env_steps} env steps)")
    if config.replay != "current":
        raise ConfigError(f"--replay {config.replay} replays earlier transitions, which only an "
                          "off-policy agent can learn from; PPO learns on-policy from its current "
                          "rollouts (accepted: --replay current)")
    if config.schedule == "sequential":
        _validate_sequential_ppo(config)
    feature_size = (cnn_feature_size(MINIGRID_OBS_SHAPE, ppo.conv_channels, ppo.cnn_pooling)
                    if ppo.arch == "moore" else 0)
    _validate_experts(ppo.arch, ppo.num_experts, feature_size, "the flattened CNN features")


def _validate_sequential_sac(config: SACTrainConfig, num_tasks: int) -> None:
    """The sequential schedule switches task between episodes: every task's share of the budget
    is whole episodes of its envs."""
    episode = config.env.envs_per_task * config.env.max_episode_steps
    if num_tasks < 2:
        raise ConfigError(f"--schedule sequential needs several tasks; {config.env.benchmark} has "
                          f"{num_tasks} (accepted: MT10, MT50, CW10)")
    if config.total_env_steps % (num_tasks * episode):
        raise ConfigError(
            f"--schedule sequential splits --total-env-steps {config.total_env_steps} into "
            f"{num_tasks} tasks of whole episodes; accepted: multiples of {num_tasks * episode} "
            f"(tasks x envs per task x max episode steps)")
    if config.warmup_env_steps >= config.phase_env_steps():
        raise ConfigError(
            f"--warmup-env-steps {config.warmup_env_steps} leaves no update in a task of "
            f"{config.phase_env_steps()} env steps (the sequential schedule warms up at every "
            f"task); accepted: below {config.phase_env_steps()}")


def _validate_sequential_ppo(config: PPOTrainConfig) -> None:
    """The sequential schedule needs the jax backend (its envs switch tasks inside compiled
    code) and whole rollouts per phase."""
    if config.env.backend != "jax":
        raise ConfigError("--schedule sequential needs --env.backend jax (the farama backend "
                          "draws a task per episode only)")
    tasks, rollout = len(config.task_names()), config.ppo.rollout_env_steps
    if tasks < 2:
        raise ConfigError(f"--schedule sequential needs several tasks; --env.task "
                          f"{config.env.task} leaves one (accepted: no --env.task)")
    if config.total_env_steps % (tasks * rollout):
        raise ConfigError(f"--schedule sequential splits --total-env-steps "
                          f"{config.total_env_steps} equally among {tasks} tasks in whole "
                          f"rollouts; accepted: multiples of {tasks * rollout} ({tasks} tasks x "
                          f"--ppo.rollout-env-steps {rollout})")


def to_dict(config: RunConfig) -> dict[str, Any]:
    """A JSON-ready nested dict of every field."""
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any], cls: type = SACTrainConfig,
              unknown: list[str] | None = None, prefix: str = "") -> Any:
    """Inverse of ``to_dict``: nested dataclasses rebuilt, JSON lists back to tuples.

    A field missing from ``data`` (added since it was written) keeps its default; a plain value
    of the wrong type (a string for an int, say) is a ``TypeError``; with ``unknown``, the dotted
    names of keys no field takes are appended to it (the options of methods no longer
    registered, under ``methods``, are dropped without a word)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if unknown is not None and prefix != "methods.":
        unknown.extend(prefix + key for key in data if key not in names)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue  # a field added since the config was written keeps its default
        value, hint = data[f.name], hints[f.name]
        nested = _dataclass_in(hint)
        if nested is not None and isinstance(value, dict):
            value = from_dict(value, nested, unknown, f"{prefix}{f.name}.")
        elif isinstance(value, list):
            value = tuple(value)
        else:
            _check_plain_type(prefix + f.name, value, hint)
        values[f.name] = value
    return cls(**values)


def _check_plain_type(name: str, value: Any, hint: Any) -> None:
    """``TypeError`` when a field typed int, float, bool or str holds another kind of value."""
    accepted = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}.get(hint)
    if accepted is None:
        return
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        raise TypeError(f"field {name} is {value!r}, expected {hint.__name__}")


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field's type hint names (through Annotated / Optional), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def differing_fields(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted names of the fields where ``a`` and ``b`` differ."""
    flat_a, flat_b = flat_fields(a), flat_fields(b)
    return [name for name in flat_a if flat_a[name] != flat_b.get(name)]


def flat_fields(config: RunConfig) -> dict[str, Any]:
    """Every field of ``config`` by dotted name (``env.max_episode_steps``), in field order, with
    JSON values (tuples as lists)."""
    return _flatten(to_dict(config))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.loads(json.dumps(value))
    return out
