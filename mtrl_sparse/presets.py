"""Named configurations: the published setting, a quick real run, and a seconds-long smoke run.

Values of ``mt10-paper`` come from Table 3 and Section 4 of Todorov et al. 2025 (TMLR),
"Sparsity-Driven Plasticity in Multi-Task Reinforcement Learning"; they are the defaults of
``SACTrainConfig`` and ``SACConfig`` themselves.

Every method works on every preset with its default options (those acting at task boundaries
only, on the sequential preset). The method intervals are the paper's
(GMP every 5,000 updates on MT10, Reset every 100,000, ...), in updates of a network; a preset
shorter than its paper setting scales them by its length (``scaled_to_paper``: its total updates
over the paper preset's, through the networks' ``interval_scale``), so that the events happen as
often per run as in the paper (and GMP reaches its target within the run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mtrl_sparse.agents.ppo import PPOConfig, updates_per_rollout
from mtrl_sparse.agents.sac import SACConfig
from mtrl_sparse.config import (
    EnvConfig,
    MiniGridEnvConfig,
    NetworkMethodConfig,
    PlasticityConfig,
    PPOTrainConfig,
    RunConfig,
    SACTrainConfig,
)
from mtrl_sparse.methods.app import APPOptions
from mtrl_sparse.methods.gmp import GMPOptions
from mtrl_sparse.methods.redo import ReDoOptions
from mtrl_sparse.methods.reset import ResetOptions
from mtrl_sparse.methods.sign_in import SignInOptions
from mtrl_sparse.methods.sparse_evolution import RigLOptions, SETOptions
from mtrl_sparse.methods.sparse_tune import SparseTuneOptions


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: RunConfig


_PAPER = SACTrainConfig()


def paper_interval_scale(config: RunConfig, paper: RunConfig, network: str) -> float:
    """The length of ``config``'s run relative to ``paper``'s, in updates of ``network``."""
    return config.total_updates(network) / paper.total_updates(network)


def scaled_to_paper(config: RunConfig, paper: RunConfig) -> RunConfig:
    """``config`` with each network's interval scale set to ``paper_interval_scale``."""
    scales = {network: paper_interval_scale(config, paper, network) for network in ("actor",
                                                                                    "critic")}
    return dataclasses.replace(
        config,
        actor=dataclasses.replace(config.actor, interval_scale=scales["actor"]),
        critic=dataclasses.replace(config.critic, interval_scale=scales["critic"]),
    )


def _scale_note(config: RunConfig) -> str:
    """The part of a preset's description that states its interval scale."""
    updates, paper = config.total_updates("actor"), _PAPER.total_updates("actor")
    return (f"method intervals x {config.actor.interval_scale:.3g} ({updates:,} of the paper's "
            f"{paper:,} updates)")


def _minigrid_paper() -> PPOTrainConfig:
    """Table 2 (the defaults of ``PPOTrainConfig`` and ``PPOConfig``) with the paper's MiniGrid
    pruning interval: GMP every 500 actor updates, and the critic's intervals scaled by its share
    of updates (1 per rollout against the actor's 56), so both networks prune on the same env
    steps (about every 18k). Reset's "every 100,000 steps" is read in env steps here (2,800 actor
    updates, 50 rollouts): a MiniGrid run makes 11,200 actor updates, so 100,000 updates would
    never reset (and the Reset arm would be the dense run). Checkpoints every 100k env
    steps."""
    config = PPOTrainConfig()
    per_rollout = updates_per_rollout(config.ppo)
    reset_updates = 100_000 // config.ppo.rollout_env_steps * per_rollout["actor"]
    return dataclasses.replace(
        config,
        methods=dataclasses.replace(config.methods, gmp=GMPOptions(prune_every_updates=500),
                                    reset=ResetOptions(every_updates=reset_updates)),
        critic=NetworkMethodConfig(interval_scale=per_rollout["critic"] / per_rollout["actor"]),
        plasticity=PlasticityConfig(every_updates=50 * per_rollout["actor"]),  # every 100k steps
        # A checkpoint every 100k env steps (a few MB of agent state): a killed MiniGrid run or
        # sweep resumes mid-run (at the default 500k a 400k-step run restarted from scratch).
        checkpoint_every_env_steps=100_000,
    )


_MINIGRID = _minigrid_paper()

_MT10_QUICK = scaled_to_paper(dataclasses.replace(
    _PAPER,
    total_env_steps=100_000,
    warmup_env_steps=10_000,
    buffer_capacity=100_000,
    eval_every_env_steps=50_000,
    log_every_env_steps=5_000,
    checkpoint_every_env_steps=50_000,
    env=EnvConfig(eval_envs_per_task=5, eval_episodes_per_task=5),
    sac=SACConfig(hidden_sizes=(256, 256, 256), batch_size=640),
    plasticity=PlasticityConfig(every_updates=3_000),
), _PAPER)

_MT10_SMOKE = scaled_to_paper(dataclasses.replace(
    _PAPER,
    total_env_steps=1_000,
    warmup_env_steps=200,
    buffer_capacity=2_000,
    eval_every_env_steps=400,
    log_every_env_steps=100,
    checkpoint_every_env_steps=200,
    env=EnvConfig(max_episode_steps=20, eval_envs_per_task=1, eval_episodes_per_task=1),
    sac=SACConfig(hidden_sizes=(32, 32), batch_size=40),
    plasticity=PlasticityConfig(every_updates=40, batch_size=100),
    progress=False,
), _PAPER)

_CW10 = scaled_to_paper(dataclasses.replace(
    _PAPER,
    schedule="sequential",
    total_env_steps=10_000_000,
    warmup_env_steps=10_000,
    buffer_capacity=1_000_000,
    eval_every_env_steps=20_000,
    env=EnvConfig(benchmark="CW10", eval_envs_per_task=10, eval_episodes_per_task=10),
    sac=dataclasses.replace(_PAPER.sac, batch_size=128),
), _PAPER)

_CW10_QUICK = scaled_to_paper(dataclasses.replace(
    _CW10,
    total_env_steps=100_000,
    warmup_env_steps=1_000,
    buffer_capacity=10_000,
    eval_every_env_steps=10_000,
    log_every_env_steps=5_000,
    checkpoint_every_env_steps=10_000,
    env=EnvConfig(benchmark="CW10", eval_envs_per_task=2, eval_episodes_per_task=2),
    sac=SACConfig(hidden_sizes=(256, 256, 256), batch_size=128),
    plasticity=PlasticityConfig(every_updates=10_000),
), _PAPER)

_CW10_SMOKE = scaled_to_paper(dataclasses.replace(
    _MT10_SMOKE,
    schedule="sequential",
    total_env_steps=400,
    warmup_env_steps=20,
    buffer_capacity=100,
    eval_every_env_steps=40,
    log_every_env_steps=40,
    checkpoint_every_env_steps=40,
    env=EnvConfig(benchmark="CW10", max_episode_steps=20, eval_envs_per_task=1,
                  eval_episodes_per_task=1),
    sac=SACConfig(hidden_sizes=(32, 32), batch_size=16),
    # Sparse tuning scores on 2 updates of a task's 20 (its 2,000 samples are 125 updates here).
    methods=dataclasses.replace(_MT10_SMOKE.methods,
                                sparse_tune=SparseTuneOptions(score_samples=32)),
), _PAPER)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "mt10-paper",
            "Meta-World MT10, multi-head SAC of the reference paper (Table 3): 20M env steps, "
            "3x400, batch 1280, 50 eval episodes per task every 200k steps",
            _PAPER,
        ),
        Preset(
            "mt10-quick",
            "Meta-World MT10 for a first look on a CPU: 100k env steps, 3x256, batch 640, "
            f"about 8 minutes on 2 cores; {_scale_note(_MT10_QUICK)}",
            _MT10_QUICK,
        ),
        Preset(
            "mt10-smoke",
            "Meta-World MT10 in seconds, for tests: 20-step episodes, 2x32 networks, batch 40; "
            f"{_scale_note(_MT10_SMOKE)}",
            _MT10_SMOKE,
        ),
        Preset(
            "cw10",
            "Continual World CW10 (--schedule sequential): the ten Meta-World v3 tasks one after "
            "another, 1M env steps each, the paper's SAC network, batch 128 from the current "
            "task's replay buffer (emptied at every task, then 10k random-action env steps), "
            "10 eval episodes per task every 20k "
            f"steps (Continual World's cadence: 50 per task, the last 5 of each task's end "
            f"averaged) and at every task's end; {_scale_note(_CW10)}",
            _CW10,
        ),
        Preset(
            "cw10-quick",
            "CW10 sized for a CPU: 10k env steps per task (100k in all), 3x256, batch 128, 2 eval "
            f"episodes per task at every task's end; {_scale_note(_CW10_QUICK)}",
            _CW10_QUICK,
        ),
        Preset(
            "cw10-smoke",
            "CW10 in seconds, for tests: two 20-step episodes per task, 2x32 networks, batch 16; "
            f"{_scale_note(_CW10_SMOKE)}",
            _CW10_SMOKE,
        ),
        *(
            Preset(
                f"minigrid-{benchmark.lower()}",
                f"MiniGrid {benchmark}, multi-task PPO of the reference paper (Table 2): 400k env "
                "steps, the lineage's CNN trunk without pooling (1,024 features into each task's "
                "2-layer head), 25 eval episodes per task; GMP every 500 actor updates (the "
                "paper's), the critic's intervals x 1/56 (its share of updates)",
                dataclasses.replace(_MINIGRID, env=MiniGridEnvConfig(benchmark=benchmark,
                                                                 backend="jax"),
                                    ppo=dataclasses.replace(_MINIGRID.ppo, cnn_pooling=False)),
            )
            for benchmark in ("MT3", "MT5", "MT7")
        ),
        Preset(
            "minigrid-quick",
            "the Quick start: MiniGrid MT3 multi-task PPO as minigrid-mt3 (400k env steps, the "
            "paper's PPO settings) with the CNN's 2x2 max-pool pinned on, so that it learns in "
            "about a minute on 2 CPU cores on the JAX backend (normalised return well above a "
            "random policy's on every task)",
            dataclasses.replace(_MINIGRID, env=MiniGridEnvConfig(benchmark="MT3", backend="jax"),
                                ppo=dataclasses.replace(_MINIGRID.ppo, cnn_pooling=True)),
        ),
        Preset(
            "minigrid-seq",
            "MiniGrid MT7's tasks one after another (--schedule sequential, the benchmark's "
            "order): 50k env steps per task (350k in all), the minigrid-mt7 network and PPO "
            "settings, evaluation on all seven tasks every 5k env steps (ten per task, the "
            "last at the task's end)",
            dataclasses.replace(
                _MINIGRID, schedule="sequential", total_env_steps=350_000,
                eval_every_env_steps=5_000,
                env=MiniGridEnvConfig(benchmark="MT7", backend="jax"),
                ppo=dataclasses.replace(_MINIGRID.ppo, cnn_pooling=False)),
        ),
        Preset(
            "minigrid-smoke",
            "MiniGrid MT3 PPO in seconds, for tests: 3 rollouts of 200 env steps, 2 eval "
            "episodes per task; GMP every 4 actor updates, every other event every 8, APP once "
            "per rollout, sparse tuning scored on 100 samples, the critic's intervals x 0.25 (its "
            "share of updates)",
            dataclasses.replace(
                _MINIGRID,
                total_env_steps=600,
                eval_every_env_steps=400,
                log_every_env_steps=200,
                env=MiniGridEnvConfig(num_envs=4, eval_envs=4, eval_episodes_per_task=2,
                                      backend="jax"),
                ppo=PPOConfig(rollout_env_steps=200, policy_batch_size=50, critic_batch_size=100,
                              policy_epochs=2),
                methods=dataclasses.replace(
                    _MINIGRID.methods, gmp=GMPOptions(prune_every_updates=4),
                    app=APPOptions(megabatches=3), set=SETOptions(update_every_updates=8),
                    rigl=RigLOptions(update_every_updates=8), reset=ResetOptions(every_updates=8),
                    redo=ReDoOptions(every_updates=8),
                    sign_in=SignInOptions(rescale_every_updates=8),
                    # 2 actor minibatches and 1 critic update of a task's 8 and 2, sequentially
                    sparse_tune=SparseTuneOptions(score_samples=100)),
                critic=NetworkMethodConfig(interval_scale=0.25),  # 2 of the actor's 8 per rollout
                plasticity=PlasticityConfig(every_updates=16, batch_size=100),
                progress=False,
            ),
        ),
    )
}

DEFAULT_PRESET = "minigrid-quick"
"""The preset of ``mtrl-sparse train`` without ``--preset``: a first run that learns on a CPU
(Meta-World's first look, ``mt10-quick``, stays at 0% success in 8 minutes of CPU training)."""


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``KeyError`` with the accepted names otherwise."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; accepted: {', '.join(PRESETS)}")
    return PRESETS[name]
