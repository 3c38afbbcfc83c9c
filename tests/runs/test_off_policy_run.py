"""End-to-end smoke runs on Meta-World MT10: the run directory, metrics, checkpoints, eval, NaN."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from mtrl_sparse.agent_kind import NonFiniteLossError
from mtrl_sparse.checkpointing import Checkpointer
from mtrl_sparse.cli import main
from mtrl_sparse.config import EnvConfig, NetworkMethodConfig
from mtrl_sparse.envs.metaworld import metaworld_task_names
from mtrl_sparse.off_policy import make_envs, make_run_learner
from mtrl_sparse.presets import get_preset
from mtrl_sparse.run_dir import read_metrics
from mtrl_sparse.run_loop import train
from support.run_checks import complete_checkpoints

TASKS = metaworld_task_names("MT10")
SMOKE = get_preset("mt10-smoke").config

# Every test here trains on Meta-World.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A static-sparse actor and a dense critic: exercises per-network methods too."""
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    config = dataclasses.replace(
        SMOKE, method="static", sparsity=0.8, critic=NetworkMethodConfig(method="dense",
                                                                        sparsity=0.0),
        run_dir=str(run_dir))
    result = train(config)
    return config, result


def test_run_directory_layout_and_provenance(smoke_run):
    config, result = smoke_run
    run_dir = result.run_dir
    assert (run_dir / "metrics.jsonl").is_file()
    assert any((run_dir / "tb").iterdir()), "TensorBoard events missing"
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["config"]["method"] == "static"
    assert stored["config"]["critic"]["method"] == "dense"
    prov = stored["provenance"]
    for package in ("mtrl-sparse", "jax", "flax", "metaworld", "mujoco"):
        assert prov["versions"][package], package
    assert prov["device"]["platform"] == "cpu"
    assert result.env_steps == config.total_env_steps


def test_resuming_a_finished_run_changes_nothing(smoke_run):
    config, result = smoke_run
    metrics = (result.run_dir / "metrics.jsonl").read_bytes()
    again = train(config, resume=True)
    assert (again.env_steps, again.updates) == (result.env_steps, result.updates)
    np.testing.assert_array_equal(again.final_success, result.final_success)
    assert (result.run_dir / "metrics.jsonl").read_bytes() == metrics


def test_metrics_rows(smoke_run):
    config, result = smoke_run
    rows = read_metrics(result.run_dir)
    assert all("step" in r for r in rows)
    train_rows = [r for r in rows if "updates" in r]
    eval_rows = [r for r in rows if "eval/success_rate" in r]
    assert [r["step"] for r in train_rows] == list(range(100, 1001, 100))
    assert [r["step"] for r in eval_rows] == [400, 800, 1000]
    for row in eval_rows:
        assert 0.0 <= row["eval/success_rate"] <= 1.0
        assert {f"eval/success/{t}" for t in TASKS} <= row.keys()
    learning = [r for r in train_rows if r["updates"] > 0]
    assert learning, "no update happened after warm-up"
    for row in learning:
        for key in ("critic_loss", "actor_loss", "alpha_loss", "actor_sparsity",
                    "critic_sparsity", "time/env_steps_per_s", "time/updates_per_s",
                    "train/success_rate"):
            assert key in row, key
        assert len(row["alpha"]) == len(TASKS)
        assert row["actor_sparsity"] == pytest.approx(0.8, abs=0.01)
        assert row["critic_sparsity"] == 0.0
        assert {f"train/success/{t}" for t in TASKS} <= row.keys()
    # One update per vector step of 10 envs once the 200 warm-up steps are over.
    assert train_rows[-1]["updates"] == (config.total_env_steps - config.warmup_env_steps) // 10


def test_checkpoints_rotate_and_hold_a_truncation_only_buffer(smoke_run):
    config, result = smoke_run
    checkpointer = Checkpointer(result.run_dir / "checkpoints", config.keep_checkpoints)
    assert checkpointer.steps() == [600, 800, 1000]
    env, eval_env = make_envs(config)
    try:
        learner = make_run_learner(config, env.spec, eval_env.spec)
        state, meta = checkpointer.restore(1000, learner.abstract_state())
    finally:
        env.close()
        eval_env.close()
        checkpointer.close()
    assert meta["env_steps"] == 1000
    buffer = jax.device_get(state.buffer)
    # 50 episodes ended by the time limit; none terminated, so all bootstrap.
    assert int(buffer.size) == 100
    assert not np.any(buffer.data.terminated)
    assert int(state.agent.step) == 80


def test_eval_command_reproduces_the_final_evaluation(smoke_run, capsys):
    _, result = smoke_run
    assert main(["eval", "--run-dir", str(result.run_dir), "--step", "1000"]) == 0
    written = json.loads((result.run_dir / "eval" / "step_1000.json").read_text())
    final_row = [r for r in read_metrics(result.run_dir) if "eval/success_rate" in r][-1]
    assert written["eval/success_rate"] == final_row["eval/success_rate"]
    assert "success rate" in capsys.readouterr().out
    assert main(["eval", "--run-dir", str(result.run_dir), "--step", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint at step 7" in err[0] and "1000" in err[0]


def test_resume_with_a_differing_flag_is_a_usage_error_and_changes_nothing(smoke_run, capsys):
    _, result = smoke_run
    before = {p: p.stat().st_mtime_ns for p in result.run_dir.rglob("*") if p.is_file()}
    code = main(["train", "--resume", "--run-dir", str(result.run_dir), "--seed", "9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "seed" in err[0] and "--total-steps" in err[0]
    code = main(["train", "--resume", "--run-dir", str(result.run_dir), "--total-steps", "500"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "only be raised" in err[0]
    after = {p: p.stat().st_mtime_ns for p in result.run_dir.rglob("*") if p.is_file()}
    assert before == after


def test_non_finite_loss_stops_the_run_naming_step_and_quantity(tmp_path):
    config = dataclasses.replace(
        SMOKE, run_dir=str(tmp_path / "nan"), total_env_steps=400,
        sac=dataclasses.replace(SMOKE.sac, critic_lr=float("nan")))
    with pytest.raises(NonFiniteLossError) as error:
        train(config)
    # Update 1 (the vector step ending at env step 210) computes a finite critic loss, then its
    # NaN learning rate writes NaN critic weights, which the actor loss of the same update reads.
    assert str(error.value) == ("non-finite actor_loss at env step 210 (update 1); run stopped; "
                                "the checkpoints before it are intact")


@pytest.mark.parametrize("eval_envs_per_task", [2, 3])
def test_evaluation_envs_per_task_other_than_the_training_envs(tmp_path, eval_envs_per_task):
    """mt10-smoke with more evaluation envs per task than training envs (as mt10-quick and
    mt10-paper have): past the first update and through two evaluations, each running
    ``eval_envs_per_task`` episodes per task, to the final checkpoint."""
    config = dataclasses.replace(
        SMOKE, run_dir=str(tmp_path / "run"), total_env_steps=400, eval_every_env_steps=300,
        env=dataclasses.replace(SMOKE.env, eval_envs_per_task=eval_envs_per_task,
                                eval_episodes_per_task=eval_envs_per_task))
    result = train(config)
    assert result.updates == (400 - config.warmup_env_steps) // 10
    rows = read_metrics(result.run_dir)
    assert [r["step"] for r in rows if "eval/success_rate" in r] == [300, 400]
    assert [r for r in rows if "updates" in r][-1]["updates"] == result.updates
    assert result.final_success.shape == (10,)
    assert complete_checkpoints(result.run_dir)[-1] == 400


def test_mt1_with_several_envs_per_task(tmp_path):
    config = dataclasses.replace(
        SMOKE, run_dir=str(tmp_path / "mt1"), total_env_steps=400, eval_every_env_steps=400,
        env=EnvConfig(benchmark="MT1", task="reach-v3", envs_per_task=2, max_episode_steps=20,
                      eval_envs_per_task=2, eval_episodes_per_task=3))
    result = train(config)
    assert result.task_names == ("reach-v3",)
    rows = read_metrics(result.run_dir)
    final_eval = [r for r in rows if "eval/success_rate" in r][-1]
    assert final_eval["step"] == 400 and "eval/success/reach-v3" in final_eval
    # 2 envs per vector step, one update per vector step after 200 warm-up steps.
    assert result.updates == (400 - 200) // 2
