"""The sequential-task schedule (``--schedule sequential``): envs that switch task at phase
boundaries, the phase reaching the agent and its methods, evaluations at every boundary, exact
resume, and vmapped groups equal to runs alone."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from mtrl_sparse.agents.cnn import stacked_head_layers as cnn_head_layers
from mtrl_sparse.cli import main
from mtrl_sparse.config import ConfigError, validate
from mtrl_sparse.envs.minigrid_jax_vector import JaxMiniGridVectorEnv
from mtrl_sparse.presets import get_preset
from mtrl_sparse.report import frozen_after_each_task, write_report
from mtrl_sparse.run_dir import METRICS_FILE, read_metrics, write_config, write_finished
from mtrl_sparse.sequential_metrics import forward_transfer, reference_area, sequential_scores
from support.optional import needs_report
from support.run_checks import (
    assert_resumes_like_uninterrupted,
    assert_rows_close,
    deterministic_rows,
    empty_layers,
    final_state,
)

SEQ_FLAGS = ["--preset", "minigrid-smoke", "--schedule", "sequential",
             "--checkpoint-every-env-steps", "200"]


def _play(env: JaxMiniGridVectorEnv, steps: int, rng: np.random.Generator) -> set[int]:
    """Random actions for ``steps`` vector steps with resets; the task ids seen."""
    seen = set(env.current_task_ids().tolist())
    for _ in range(steps):
        step = env.step(rng.integers(0, 7, env.spec.num_envs))
        env.reset_done(step.terminated | step.truncated)
        seen |= set(env.current_task_ids().tolist())
    return seen


def test_a_fixed_task_holds_for_every_env_and_every_later_episode():
    """After ``fix_task(t)`` every env is in a fresh episode of task t and every episode after
    it too; ``fix_task(-1)`` returns to uniform draws; a task id outside the set is refused."""
    env = JaxMiniGridVectorEnv("MT3", 8, seed=3)
    env.reset()
    rng = np.random.default_rng(0)
    obs = env.fix_task(2)
    assert obs.shape == (8, 7, 7, 3) and env.fixed_task() == 2
    assert _play(env, 300, rng) == {2}
    env.fix_task(-1)
    assert _play(env, 300, rng) == {0, 1, 2}
    with pytest.raises(ValueError, match="task 3"):
        env.fix_task(3)


def test_the_sequential_schedule_splits_the_budget_into_one_phase_per_task():
    config = get_preset("minigrid-seq").config
    validate(config)
    assert config.phases() == 7 and config.phase_env_steps() == 50_000
    assert [config.phase_at(s) for s in (0, 49_999, 50_000, 349_999, 350_000)] == [0, 0, 1, 6, 6]
    assert config.network_methods()["actor"].phases == 7
    multitask = get_preset("minigrid-mt7").config
    assert multitask.phases() == 1 and multitask.phase_at(10**9) == 0
    with pytest.raises(ConfigError, match="multiples of 14000"):
        validate(dataclasses.replace(config, total_env_steps=50_000))


@pytest.mark.slow
def test_a_sequential_run_trains_one_task_per_phase_and_resumes_exactly(tmp_path, capsys):
    """minigrid-smoke sequentially (3 tasks x 200 env steps): each phase's training episodes are
    of its task only, an evaluation of all tasks ends every phase with its ``phase``, and a run
    resumed from the checkpoint at the second boundary ends exactly as the uninterrupted one."""
    full = tmp_path / "full"
    assert main(["train", *SEQ_FLAGS, "--run-dir", str(full)]) == 0
    rows = read_metrics(full)
    train = [r for r in rows if "policy_loss" in r]
    tasks = get_preset("minigrid-smoke").config.task_names()
    for phase, row in enumerate(train):
        ended = {t for t in tasks if row[f"train/return/{t}"] is not None}
        assert ended <= {tasks[phase]}, (phase, ended)
    evals = [r for r in rows if "eval/normalized_return" in r]
    assert [(r["step"], r["phase"]) for r in evals] == [(200, 0), (400, 1), (600, 2)]
    assert all(f"eval/normalized_return/{t}" in r for r in evals for t in tasks)
    report = write_report([full], tmp_path / "report", reps=100, figures=False)
    scores = sequential_scores(rows, tasks, "eval/normalized_return")  # in schedule order
    assert (f"| dense | 1 | {scores.final_average:.3f} |" in report
            and f"| {scores.mean_forgetting:.3f} |" in report), report
    assert " ".join(f"{a:.2f}" for a in scores.average_after) in report
    assert_resumes_like_uninterrupted(full, tmp_path / "interrupted", 600)
    capsys.readouterr()


@pytest.mark.slow
def test_vmapped_sequential_runs_equal_the_runs_alone(tmp_path, capsys):
    """APP (one pruning event per task) in a vmapped group of two seeds: the run of seed 1
    equals it alone, and each run prunes once per phase, to the target after the last."""
    group, alone = tmp_path / "group", tmp_path / "alone"
    flags = [*SEQ_FLAGS, "--method", "app"]
    assert main(["train", *flags, "--sparsity", "0.9", "--seeds", "0-1",
                 "--run-dir", str(group)]) == 0
    assert main(["train", *flags, "--sparsity", "0.9", "--seed", "1",
                 "--run-dir", str(alone)]) == 0
    assert_rows_close(deterministic_rows(group / "sparsity0.9-seed1"), deterministic_rows(alone))
    train = [r for r in read_metrics(alone) if "policy_loss" in r]
    assert [r["actor/app/events"] for r in train] == [1, 2, 3]
    assert [r["critic/app/events"] for r in train] == [1, 2, 3]
    assert train[-1]["actor_sparsity"] == pytest.approx(0.9, abs=0.005)
    # No layer and no task's head slice emptied: each task's head kept weights through the
    # other tasks' megabatches, where it had no data (saliency 0).
    _, state = final_state(alone)
    for network in (state.actor, state.critic):
        assert empty_layers(network.masks, cnn_head_layers(3)) == []
    capsys.readouterr()


def _eval_row(step: int, phase: int, scores: tuple[float, ...]) -> dict:
    return {"step": step, "phase": phase, "eval/normalized_return": float(np.mean(scores)),
            **{f"eval/normalized_return/{t}": s for t, s in zip("abc", scores, strict=True)}}


def test_average_performance_and_forgetting_follow_continual_worlds_definitions():
    """Hand-computed with a window of one evaluation: A_p over the tasks seen at each phase's
    last evaluation; F_i the score at the end of task i's own phase minus the final one (not the
    best score since: task a peaks at 0.9 mid-phase 1, which is not forgetting of the
    end-of-task score 0.8), 0 for the last task, averaged over all three tasks; a step logged
    twice (a resumed run) counts once; training rows are ignored. With Continual World's window
    of 5, each end is the mean of the phase's last (up to) 5 evaluations."""
    rows = [_eval_row(100, 0, (0.5, 0.1, 0.0)), {"step": 150, "policy_loss": 1.0},
            _eval_row(200, 0, (0.3, 0.0, 0.1)), _eval_row(200, 0, (0.8, 0.0, 0.1)),
            _eval_row(300, 1, (0.9, 0.5, 0.1)), _eval_row(400, 1, (0.6, 0.9, 0.2)),
            _eval_row(600, 2, (0.4, 0.95, 0.7))]
    scores = sequential_scores(rows, ("a", "b", "c"), "eval/normalized_return", window=1)
    np.testing.assert_allclose(scores.average_after, [0.8, 0.75, 2.05 / 3])
    np.testing.assert_allclose(scores.forgetting, [0.8 - 0.4, 0.9 - 0.95, 0.0])
    np.testing.assert_array_equal(scores.evaluations_per_phase, [2, 2, 1])
    assert scores.final_average == pytest.approx(2.05 / 3)
    assert scores.mean_forgetting == pytest.approx((0.4 - 0.05) / 3)
    multitask = [{k: v for k, v in r.items() if k != "phase"} for r in rows]
    assert sequential_scores(multitask, ("a", "b", "c"), "eval/normalized_return") is None
    windowed = sequential_scores(rows, ("a", "b", "c"), "eval/normalized_return")  # window 5
    np.testing.assert_allclose(windowed.average_after,
                               [0.65, ((0.9 + 0.6) / 2 + (0.5 + 0.9) / 2) / 2, 2.05 / 3])
    np.testing.assert_allclose(windowed.forgetting, [0.65 - 0.4, 0.7 - 0.95, 0.0])
    # Forward transfer: AUC_i is the mean of task i's scores over its own phase's evaluations.
    np.testing.assert_allclose(scores.area, [(0.5 + 0.8) / 2, (0.5 + 0.9) / 2, 0.7])
    assert reference_area(multitask[:4], "b", "eval/normalized_return") == (  # step 200 once
        pytest.approx((0.1 + 0.0) / 2), 2)
    np.testing.assert_allclose(
        forward_transfer(scores.area, np.array([0.65, 0.4, 1.0])), [0.0, 0.5, np.nan])
    np.testing.assert_allclose(
        forward_transfer(scores.area, np.array([0.9, np.nan, 0.2])),
        [(0.65 - 0.9) / 0.1, np.nan, 0.5 / 0.8])


def _write_run(path, config, rows) -> None:
    path.mkdir(parents=True)
    write_config(path, dataclasses.replace(config, run_dir=str(path)), "minigrid-smoke")
    (path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_finished(path, config.total_env_steps, 1, rows[-1])


@needs_report
def test_the_report_finds_the_single_task_references_and_gives_forward_transfer(tmp_path):
    """A sequential sweep as ``sweep`` leaves it (minigrid-smoke, 3 tasks x 400 env steps, two
    evaluations per phase; references ``reference-<task>/seed<N>`` of one task and 400 env
    steps): the references enter no group and the final table, and the forward transfer is
    the hand-computed mean over runs of the mean over tasks of (AUC - AUC_ref) / (1 - AUC_ref),
    AUC_ref averaged over the two reference seeds (a single-task run of another setup is not one
    of them); the per-task average figure is drawn."""
    base = dataclasses.replace(get_preset("minigrid-smoke").config, schedule="sequential",
                               total_env_steps=1200)
    tasks = base.task_names()
    # Sequential runs: task i scores area_i[seed] at both evaluations of its phase, 0.1 else.
    area = {0: (0.6, 0.3, 0.5), 1: (0.8, 0.5, 0.5)}
    for seed, areas in area.items():
        rows = []
        for step in range(200, 1201, 200):
            phase = (step - 1) // 400
            scores = [areas[i] if i == phase else 0.1 for i in range(3)]
            per_task = dict(zip(tasks, scores, strict=True))
            rows.append({"step": step, "phase": phase, "eval/normalized_return": np.mean(scores),
                         **{f"eval/normalized_return/{t}": v for t, v in per_task.items()}})
        _write_run(tmp_path / "s" / "dense" / f"seed{seed}",
                   dataclasses.replace(base, seed=seed), rows)
    # References: task i at (0.2, 0.4) and (0.4, 0.6) over its two evaluations: AUC_ref 0.4.
    for task in tasks:
        for seed, (first, second) in enumerate(((0.2, 0.4), (0.4, 0.6))):
            config = dataclasses.replace(base, schedule="multitask", total_env_steps=400,
                                         seed=seed, env=dataclasses.replace(base.env, task=task))
            rows = [{"step": step, "eval/normalized_return": v,
                     f"eval/normalized_return/{task}": v}
                    for step, v in ((200, first), (400, second))]
            _write_run(tmp_path / "s" / f"reference-{task}" / f"seed{seed}", config, rows)
    # A single-task run of another setup (learning rate) is no reference of these runs.
    other = dataclasses.replace(config, ppo=dataclasses.replace(config.ppo, actor_lr=3e-4))
    _write_run(tmp_path / "s" / "other" / "seed0", other, rows)
    report = write_report([tmp_path / "s"], tmp_path / "r", reps=100)
    expected = np.mean([np.mean([(a - 0.4) / 0.6 for a in areas]) for areas in area.values()])
    section = report[report.index("## Sequential schedule"):report.index("## Figures")]
    (row,) = [line for line in section.splitlines()
              if line.startswith("| ") and not line.startswith("| group")]
    assert row.split("|")[2].strip() == "2", row  # the two sequential runs
    assert f"| {expected:.3f} |" in row, report
    assert "reference runs per task: 2" in report
    assert "3 runs in" in report and "6 single-task reference runs" in report
    final_table = report[report.index("## Final performance"):report.index("## Per task")]
    assert [line.split("|")[2].strip() for line in final_table.splitlines()
            if line.startswith("| ") and not line.startswith("| group")] == ["2", "1"], report
    assert (tmp_path / "r" / "average_after_each_task.png").is_file()


@pytest.mark.slow
def test_sparse_tune_freezes_most_of_the_network_after_the_first_task(tmp_path, capsys):
    """minigrid-smoke sequentially with sparse_tune (100 scored samples per task: 2 actor
    minibatches, 1 critic update): one tuning per task boundary; in the first task every entry
    with a gradient moves (the other tasks' heads get none), in later ones only what the task
    may move (5% of the trunk kernels, biases, norms and its own head)."""
    run = tmp_path / "tune"
    assert main(["train", *SEQ_FLAGS, "--method", "sparse_tune",
                 "--methods.sparse-tune.score-samples", "100", "--run-dir", str(run)]) == 0
    train = [r for r in read_metrics(run) if "policy_loss" in r]
    for net in ("actor", "critic"):
        assert [r[f"{net}/sparse_tune/tunings"] for r in train] == [0, 1, 2]
        assert train[0][f"{net}/sparse_tune/trainable_share"] == 1.0
        assert train[0][f"{net}/sparse_tune/updated_fraction"] > 0.3
        # A third of the (large) head layers is the task's own in this 3-task smoke network.
        share = train[-1][f"{net}/sparse_tune/trainable_share"]
        assert 0 < train[-1][f"{net}/sparse_tune/updated_fraction"] <= share < 0.3
    capsys.readouterr()


@pytest.mark.slow
def test_ibm_consolidates_at_every_boundary_and_resumes_exactly(tmp_path, capsys):
    """minigrid-smoke sequentially with IBM: one consolidation per task boundary, the frozen
    share of the gated weights never shrinking, and a run resumed from the checkpoint at the
    second boundary ending exactly as the uninterrupted one (gates, their noise and optimizer,
    the frozen set and the snapshots are all in the checkpoint)."""
    run = tmp_path / "ibm"
    assert main(["train", *SEQ_FLAGS, "--method", "ibm", "--run-dir", str(run)]) == 0
    train = [r for r in read_metrics(run) if "policy_loss" in r]
    for net in ("actor", "critic"):
        assert [r[f"{net}/ibm/consolidations"] for r in train] == [0, 1, 2]
        frozen = [r[f"{net}/ibm/frozen_fraction"] for r in train]
        # One rollout a task: the gates barely move, so the first task keeps (and freezes)
        # nearly the whole trunk; later tasks re-use it through their gates.
        assert frozen[0] == 0.0 < frozen[1] <= frozen[2] <= 1.0
    report = write_report([run], tmp_path / "report", reps=100)
    assert "### Trunk frozen after each task" in report
    assert (tmp_path / "report" / "frozen_after_each_task.png").is_file()
    assert_resumes_like_uninterrupted(run, tmp_path / "interrupted", 600)
    capsys.readouterr()


def test_the_frozen_share_after_each_task_is_read_in_the_next_tasks_phase():
    rows = [{"step": 100, "actor/ibm/frozen_fraction": 0.0},
            {"step": 200, "actor/ibm/frozen_fraction": 0.0, "actor/ibm/layers/a/frozen": 0.0},
            {"step": 300, "actor/ibm/frozen_fraction": 0.4}, {"step": 300, "phase": 1},
            {"step": 400, "actor/ibm/frozen_fraction": 0.5},
            {"step": 500, "actor/ibm/frozen_fraction": 0.7}]
    np.testing.assert_array_equal(frozen_after_each_task(rows, "actor", 200, 3), [0.4, 0.7])
    assert frozen_after_each_task(rows, "critic", 200, 3) is None
    assert frozen_after_each_task(rows[:3], "actor", 200, 3) is None  # task 2 never reached


CW10_FLAGS = ["--preset", "cw10-smoke"]


@pytest.mark.slow
def test_a_sequential_sac_run_trains_one_task_per_phase_and_resumes_exactly(tmp_path, capsys):
    """cw10-smoke (SAC, the ten CW10 tasks x two 20-step episodes): each phase's training
    episodes are of its task only, each phase warms up before it updates, an evaluation of all
    tasks ends every phase, the report has
    the sequential table, and a run resumed from the checkpoint before the last boundary ends
    exactly as the uninterrupted one (the phase's envs rebuilt from the checkpoint)."""
    full = tmp_path / "full"
    assert main(["train", *CW10_FLAGS, "--run-dir", str(full)]) == 0
    rows = read_metrics(full)
    tasks = get_preset("cw10-smoke").config.task_names()
    train = [r for r in rows if "train/episodes" in r]
    assert len(train) == len(tasks) == 10
    for phase, row in enumerate(train):
        ended = {t for t in tasks if row[f"train/return/{t}"] is not None}
        assert ended == {tasks[phase]}, (phase, ended)
    evals = [r for r in rows if "eval/success_rate" in r]
    assert [(r["step"], r["phase"]) for r in evals] == [(40 * (p + 1), p) for p in range(10)]
    # Every task starts with its own warm-up (Continual World): 20 random-action env steps
    # without updates, then 20 updates, in each of the ten 40-step phases.
    config = get_preset("cw10-smoke").config
    assert config.warmup_env_steps == 20 and config.total_updates() == 200
    assert [r["updates"] for r in train] == [20 * (p + 1) for p in range(10)]
    report = write_report([full], tmp_path / "report", reps=100, figures=False)
    assert "forgetting" in report.lower(), report
    assert_resumes_like_uninterrupted(full, tmp_path / "interrupted", 400)
    capsys.readouterr()


@pytest.mark.slow
def test_ibm_and_app_see_every_sac_task_boundary(tmp_path, capsys):
    """SAC on cw10-smoke: IBM consolidates at each of the nine boundaries (actor and critics),
    APP prunes once per task (a megabatch each) to the target after the last."""
    ibm, app = tmp_path / "ibm", tmp_path / "app"
    assert main(["train", *CW10_FLAGS, "--method", "ibm", "--run-dir", str(ibm)]) == 0
    assert main(["train", *CW10_FLAGS, "--method", "app", "--sparsity", "0.9",
                 "--run-dir", str(app)]) == 0
    train = [r for r in read_metrics(ibm) if "train/episodes" in r]
    for net in ("actor", "critic"):
        assert [r[f"{net}/ibm/consolidations"] for r in train] == list(range(10))
    train = [r for r in read_metrics(app) if "train/episodes" in r]
    assert [r["actor/app/events"] for r in train] == list(range(1, 11))
    assert train[-1]["actor_sparsity"] == pytest.approx(0.9, abs=0.005)
    capsys.readouterr()


@pytest.mark.slow
def test_cumulative_replay_keeps_every_task_and_resumes_exactly(tmp_path, capsys):
    """cw10-smoke with --replay cumulative: the last checkpoint's replay holds every task's
    transitions in its own ring (two 20-step episodes each, up to capacity / 10), where the
    default empties it at every boundary (one ring, the last task's); it trains with finite
    losses in every task, and a run resumed before the last boundary ends exactly as the
    uninterrupted one."""
    cumulative, current = tmp_path / "cumulative", tmp_path / "current"
    assert main(["train", *CW10_FLAGS, "--replay", "cumulative", "--run-dir",
                 str(cumulative)]) == 0
    assert main(["train", *CW10_FLAGS, "--run-dir", str(current)]) == 0
    capacity = get_preset("cw10-smoke").config.buffer_capacity
    _, state = final_state(cumulative)
    np.testing.assert_array_equal(state.buffer.size, [min(40, capacity // 10)] * 10)
    _, state = final_state(current)
    np.testing.assert_array_equal(state.buffer.size, min(40, capacity))
    losses = [r["critic_loss"] for r in deterministic_rows(cumulative) if "critic_loss" in r]
    assert len(losses) == 10 and np.all(np.isfinite(losses))
    assert_resumes_like_uninterrupted(cumulative, tmp_path / "interrupted", 400)
    capsys.readouterr()


def test_sequential_sac_refuses_budgets_of_partial_episodes_and_vmapped_groups():
    config = get_preset("cw10-smoke").config
    with pytest.raises(ConfigError, match="multiples of 200"):
        validate(dataclasses.replace(config, total_env_steps=500))
    with pytest.raises(ConfigError, match="leaves no update in a task of 40 env steps"):
        validate(dataclasses.replace(config, warmup_env_steps=40))
    from mtrl_sparse.run_loop import make_group
    with pytest.raises(ConfigError, match="one run per group"):
        make_group([config, dataclasses.replace(config, seed=1)])
