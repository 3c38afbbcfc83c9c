"""Every preset trains end to end with its own environments and networks: past its first update,
its first method event, its first evaluation and its first checkpoint.

A preset is run as registered, with only its lengths cut (``shortened``): the budget, warm-up,
evaluation, logging, checkpoint and probe intervals, the evaluation episodes per task, Meta-World's
episode length, and the method intervals (every event fires at every update of the network, scaled
by the preset's own interval scale). Everything that gives a program its shapes is the preset's:
the benchmark and its tasks, the training and evaluation envs per task, the networks, batch and
rollout sizes, the replay capacity, the schedule. GMP at 90% runs on every network, so the first
event changes the masks. The test is parametrised over ``PRESETS``, so a preset added later is
covered without editing it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mtrl_sparse.config import PPOTrainConfig, RunConfig, SACTrainConfig, with_current_methods
from mtrl_sparse.presets import PRESETS
from mtrl_sparse.run_dir import read_metrics
from mtrl_sparse.run_loop import train
from support.method_options import options_firing_every_update
from support.run_checks import complete_checkpoints

pytestmark = pytest.mark.slow

EPISODE_STEPS = 20
"""Meta-World's time limit in the shortened runs (the presets' is 500; every SAC checkpoint waits
for an episode boundary)."""


def shortened_sac(config: SACTrainConfig) -> SACTrainConfig:
    """Two episodes (one per phase of a sequential schedule, which evaluates at every task
    boundary); warm-up half an episode; evaluation, logging and checkpoints every episode; one
    evaluation episode on each evaluation env."""
    env = dataclasses.replace(
        config.env, max_episode_steps=min(config.env.max_episode_steps, EPISODE_STEPS),
        eval_episodes_per_task=min(config.env.eval_episodes_per_task,
                                   config.env.eval_envs_per_task))
    config = dataclasses.replace(config, env=env)
    episode = config.vector_env_steps() * env.max_episode_steps
    return dataclasses.replace(
        config, total_env_steps=max(2, config.phases()) * episode,
        warmup_env_steps=episode // 2, eval_every_env_steps=episode,
        log_every_env_steps=episode, checkpoint_every_env_steps=episode)


def shortened_ppo(config: PPOTrainConfig) -> PPOTrainConfig:
    """Two rollouts (one per phase of a sequential schedule); evaluation, logging and checkpoints
    every rollout; one evaluation episode per task."""
    rollout = config.ppo.rollout_env_steps
    return dataclasses.replace(
        config, total_env_steps=max(2, config.phases()) * rollout, eval_every_env_steps=rollout,
        log_every_env_steps=rollout, checkpoint_every_env_steps=rollout,
        env=dataclasses.replace(config.env, eval_episodes_per_task=1))


SHORTENERS = {SACTrainConfig: shortened_sac, PPOTrainConfig: shortened_ppo}


def shortened(config: RunConfig, run_dir: Path) -> RunConfig:
    """``config`` cut to a run of seconds, its shapes kept (see the module docstring), running
    GMP at 90% on every network with every event due at every (scaled) update, and two
    plasticity probes (half way and at the end)."""
    base = next((cls for cls in SHORTENERS if isinstance(config, cls)), None)
    assert base is not None, f"no shortening for {type(config).__name__} runs: add one here"
    config = with_current_methods(SHORTENERS[base](config))
    probe_every = max(1, config.total_updates("actor") // 2)
    return dataclasses.replace(
        config, method="gmp", sparsity=0.9, methods=options_firing_every_update(),
        plasticity=dataclasses.replace(config.plasticity, every_updates=probe_every),
        progress=False, run_dir=str(run_dir))


def presets_of(kind: type[RunConfig]) -> list[str]:
    """The presets whose config is a ``kind``."""
    return [name for name, preset in PRESETS.items() if isinstance(preset.config, kind)]


def test_every_preset_is_trained_below():
    """The two classes below (one per agent kind, so that pytest-xdist's ``loadscope`` may give
    them to different workers) cover every preset."""
    assert sorted(presets_of(SACTrainConfig) + presets_of(PPOTrainConfig)) == sorted(PRESETS)


def assert_trains_past_first_update_event_evaluation_and_checkpoint(preset: str, tmp_path):
    config = shortened(PRESETS[preset].config, tmp_path / preset)
    result = train(config)

    assert result.env_steps == config.total_env_steps
    rows = read_metrics(result.run_dir)
    train_rows = [row for row in rows if "actor_sparsity" in row]  # the agent's metrics rows
    assert train_rows and train_rows[0]["updates"] > 0, "no update before the first train row"
    # GMP's events pruned every network to 90% (the schedule ends within the run).
    last = train_rows[-1]
    for network in config.NETWORKS:
        assert last[f"{network}_sparsity"] == pytest.approx(0.9, abs=0.02), network
    eval_rows = [row for row in rows if "eval/success_rate" in row]
    assert len(eval_rows) >= 2, "an evaluation before the end, and one at the end"
    assert any(key.startswith("plasticity/") for row in rows for key in row), "no probe row"
    checkpoints = complete_checkpoints(result.run_dir)
    assert checkpoints[-1] == config.total_env_steps and len(checkpoints) >= 2, checkpoints


class TestMetaWorldSACPresets:
    @pytest.mark.parametrize("preset", presets_of(SACTrainConfig))
    def test_trains_past_its_first_update_event_evaluation_and_checkpoint(self, preset,
                                                                           tmp_path):
        assert_trains_past_first_update_event_evaluation_and_checkpoint(preset, tmp_path)


class TestMiniGridPPOPresets:
    @pytest.mark.parametrize("preset", presets_of(PPOTrainConfig))
    def test_trains_past_its_first_update_event_evaluation_and_checkpoint(self, preset,
                                                                           tmp_path):
        assert_trains_past_first_update_event_evaluation_and_checkpoint(preset, tmp_path)
