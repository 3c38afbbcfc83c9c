"""Multi-task PPO on MiniGrid end to end: CLI, metrics rows, evaluation, methods, determinism."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrl_sparse.agents.net_state import apply_masks, masked_params
from mtrl_sparse.cli import main
from mtrl_sparse.config import NetworkMethodConfig, validate
from mtrl_sparse.envs.minigrid import MiniGridVectorEnv
from mtrl_sparse.methods.base import scale_intervals
from mtrl_sparse.methods.gmp import GMPOptions
from mtrl_sparse.methods.redo import ReDoOptions
from mtrl_sparse.methods.registry import MethodOptions
from mtrl_sparse.on_policy import make_run_ppo
from mtrl_sparse.presets import get_preset
from mtrl_sparse.probe import make_ppo_probe
from mtrl_sparse.run_dir import read_config, read_metrics
from mtrl_sparse.run_loop import train
from support.optional import needs_farama
from support.run_checks import deterministic_rows, without_wall_clock

SMOKE = get_preset("minigrid-smoke").config
TASKS = ("MiniGrid-LavaGapS7-v0", "MiniGrid-RedBlueDoors-6x6-v0", "MiniGrid-MemoryS11-v0")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ppo") / "run"
    assert main(["train", "--preset", "minigrid-smoke", "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.mark.slow
def test_cli_run_writes_the_agent_metrics_and_evaluations(cli_run):
    stored = json.loads((cli_run / "config.json").read_text())
    assert stored["agent"] == "ppo" and stored["preset"] == "minigrid-smoke"
    assert read_config(cli_run) == dataclasses.replace(SMOKE, run_dir=str(cli_run))
    rows = read_metrics(cli_run)
    train_rows = [r for r in rows if "policy_loss" in r]
    eval_rows = [r for r in rows if "eval/normalized_return" in r]
    assert [r["step"] for r in train_rows] == [200, 400, 600]
    # 2 actor epochs x 4 minibatches of 50 and 1 critic epoch x 2 minibatches of 100 per rollout
    assert [r["updates"] for r in train_rows] == [8, 16, 24]
    assert [r["critic_updates"] for r in train_rows] == [2, 4, 6]
    assert [r["step"] for r in eval_rows] == [400, 600]
    for row in eval_rows:
        for task in TASKS:
            assert 0.0 <= row[f"eval/normalized_return/{task}"] <= 1.0 + 1e-6
            assert 0.0 <= row[f"eval/success/{task}"] <= 1.0
    assert (cli_run / "checkpoints").is_dir()
    probe_rows = [r for r in rows if "plasticity/actor/dormant_fraction" in r]
    assert [(r["step"], r["updates"]) for r in probe_rows] == [(400, 16)]  # every 16 updates
    for network in ("actor", "critic"):
        row = probe_rows[0]
        assert 0.0 <= row[f"plasticity/{network}/dormant_fraction"] <= 1.0
        assert row[f"plasticity/{network}/srank"] >= 1
        assert row[f"plasticity/{network}/weight_norm"] > 0
    assert probe_rows[0]["plasticity/actor/fisher_trace"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "farama"])
def test_resume_continues_mid_episode_with_the_same_numbers(tmp_path, capsys, backend):
    """A run resumed from its checkpoint at 400 env steps (episodes in progress, rows after it
    in the metrics) ends exactly as the uninterrupted run; resuming a finished run adds nothing.
    On both env backends (the presets' jax, and Farama's stepped from the host)."""
    full = tmp_path / "full"
    assert main(["train", "--preset", "minigrid-smoke", "--run-dir", str(full),
                 "--env.backend", backend, "--checkpoint-every-env-steps", "200"]) == 0
    interrupted = tmp_path / "interrupted"
    shutil.copytree(full, interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "600")  # as if killed before the last save
    assert main(["train", "--resume", "--run-dir", str(interrupted)]) == 0
    assert deterministic_rows(interrupted) == deterministic_rows(full)
    before = (full / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", "--run-dir", str(full)]) == 0
    assert (full / "metrics.jsonl").read_bytes() == before
    capsys.readouterr()


@pytest.mark.slow
def test_eval_of_a_ppo_checkpoint_writes_its_scores_and_repeats_exactly(cli_run, capsys):
    results = []
    for _ in range(2):
        assert main(["eval", "--run-dir", str(cli_run)]) == 0
        out = capsys.readouterr().out
        assert "checkpoint at env step 600" in out and "normalised return" in out
        results.append(json.loads((cli_run / "eval" / "step_600.json").read_text()))
    assert results[0] == results[1] and results[0]["step"] == 600
    for task in TASKS:
        assert 0.0 <= results[0][f"eval/normalized_return/{task}"] <= 1.0 + 1e-6


@needs_farama  # probes a run on the farama backend
def test_ppo_probe_fisher_trace_is_the_mean_per_sample_squared_score():
    env = MiniGridVectorEnv("MT3", 4, 0)
    ppo = make_run_ppo(dataclasses.replace(SMOKE, method="static", sparsity=0.5), env)
    state = jax.jit(ppo.init)(jax.random.PRNGKey(0))
    obs, tasks = jnp.asarray(env.reset()), jnp.asarray(env.current_task_ids())
    env.close()
    key = jax.random.PRNGKey(1)
    metrics = jax.jit(make_ppo_probe(ppo, 0.001, 0.01, fisher_chunk=3))(state, obs, tasks, key)

    @jax.jit
    def squared_score(i):
        """The squared norm of the score of sample i alone (one compilation for all i)."""
        actions = jax.random.categorical(
            key, ppo.actor_logits(masked_params(state.actor), obs, tasks))

        def log_prob(params):
            one_obs = jax.lax.dynamic_slice_in_dim(obs, i, 1)
            one_task = jax.lax.dynamic_slice_in_dim(tasks, i, 1)
            logits = ppo.actor_logits(apply_masks(params, state.actor.masks), one_obs, one_task)
            return jax.nn.log_softmax(logits)[0, actions[i]]

        grads = jax.grad(log_prob)(state.actor.params)
        return sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads))

    squared = [float(squared_score(i)) for i in range(4)]
    assert float(metrics["plasticity/actor/fisher_trace"]) == pytest.approx(np.mean(squared),
                                                                           rel=1e-4)


@pytest.mark.slow
def test_same_seed_same_numbers(cli_run, tmp_path):
    result = train(dataclasses.replace(SMOKE, run_dir=str(tmp_path / "again")))
    first, second = read_metrics(cli_run), read_metrics(result.run_dir)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert without_wall_clock([a]) == without_wall_clock([b])


@pytest.mark.slow
def test_methods_apply_to_ppo_conv_kernels_included(tmp_path):
    # GMP prunes the actor (conv kernels included) every 4 of its 24 updates, ReDo recycles its
    # neurons every 4; the critic is statically sparse.
    options = MethodOptions(
        gmp=GMPOptions(start_fraction=0.0, end_fraction=0.7, prune_every_updates=4),
        redo=ReDoOptions(every_updates=4, tau=0.3))
    config = dataclasses.replace(
        SMOKE, methods=options, run_dir=str(tmp_path / "run"),
        actor=NetworkMethodConfig(method="gmp+redo", sparsity=0.9),
        critic=NetworkMethodConfig(method="static", sparsity=0.8))
    result = train(config)
    rows = [r for r in read_metrics(result.run_dir) if "policy_loss" in r]
    sparsity = [r["actor_sparsity"] for r in rows]
    assert 0.0 < sparsity[0] < sparsity[-1] == pytest.approx(0.9, abs=0.01)
    assert rows[-1]["actor/gmp/events"] >= 2
    assert rows[-1]["actor/redo/recycled_total"] > 0
    assert all(r["critic_sparsity"] == pytest.approx(0.8, abs=0.01) for r in rows)
    assert np.all(np.isfinite([r["policy_loss"] for r in rows]))


def test_minigrid_presets_prune_both_networks_on_the_same_env_steps():
    """The paper's GMP every 500 updates, with the critic's intervals scaled by its share of
    updates: both networks reach the final sparsity, at nearly the same env step."""
    config = dataclasses.replace(get_preset("minigrid-mt3").config, method="gmp+redo",
                                 sparsity=0.95)
    validate(config)
    settings = config.network_methods()
    every = {name: scale_intervals(config.methods.gmp, s.interval_scale).prune_every_updates
             for name, s in settings.items()}
    assert every == {"actor": 500, "critic": 9}
    assert scale_intervals(config.methods.redo, settings["critic"].interval_scale).every_updates \
        == round(config.methods.redo.every_updates / 56)
    per_rollout = {"actor": 56, "critic": 1}
    env_steps_between_events = {name: every[name] / per_rollout[name] * 2000 for name in every}
    assert abs(env_steps_between_events["actor"] / env_steps_between_events["critic"] - 1) < 0.05


@pytest.mark.slow
def test_a_kept_partial_minibatch_is_one_more_update_per_epoch(tmp_path, capsys):
    """200-sample rollouts in actor minibatches of 60: 3 full and one of 20 per epoch, so 2
    epochs make 8 actor updates per rollout (6 when the partial one is left out)."""
    flags = ["train", "--preset", "minigrid-smoke", "--ppo.policy-batch-size", "60"]
    for keep, per_rollout in (("--ppo.keep-partial-minibatch", 8),
                              ("--ppo.no-keep-partial-minibatch", 6)):
        run = tmp_path / keep
        assert main([*flags, keep, "--run-dir", str(run)]) == 0
        train_rows = [r for r in read_metrics(run) if "policy_loss" in r]
        assert [r["updates"] for r in train_rows] == [per_rollout, 2 * per_rollout,
                                                      3 * per_rollout]
        assert all(np.isfinite(r["policy_loss"]) for r in train_rows)
    capsys.readouterr()
