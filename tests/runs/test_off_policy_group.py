"""SAC runs vmapped in one program (``VmappedOffPolicyRuns``) against the same runs trained alone:
the vmapped act and learn, the run directories, and resuming a group or one of its runs alone."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from mtrl_sparse.agents.replay_buffer import Transition
from mtrl_sparse.config import ConfigError
from mtrl_sparse.envs.base import MultiTaskEnvSpec
from mtrl_sparse.envs.metaworld import metaworld_task_names
from mtrl_sparse.off_policy import make_run_learner
from mtrl_sparse.off_policy_group import (
    VmappedOffPolicyRuns,
    make_group_learner,
    stack_train_states,
    train_state_of_run,
)
from mtrl_sparse.presets import get_preset
from mtrl_sparse.run_dir import read_metrics
from mtrl_sparse.run_loop import GROUP_KINDS, make_group, train, train_group
from support.invariants import assert_trees_close, assert_trees_equal
from support.run_checks import assert_rows_close, deterministic_rows, final_state

pytestmark = pytest.mark.cpu_numbers  # compares programs bit for bit

SMOKE = dataclasses.replace(
    get_preset("mt10-smoke").config, method="gmp",
    env=dataclasses.replace(get_preset("mt10-smoke").config.env, eval_envs_per_task=2,
                            eval_episodes_per_task=2))
"""Two evaluation envs per task against one training env: the learner acts with the training
envs' task ids, the evaluation with its own."""
RUNS = ((0, 0.5), (1, 0.9))
"""(seed, target sparsity) of the two runs of the group: they differ in both."""


def run_configs(parent: Path) -> list:
    """The group's configs, each run in its own directory under ``parent``."""
    return [dataclasses.replace(SMOKE, seed=seed, sparsity=sparsity,
                                run_dir=str(parent / f"sparsity{sparsity}-seed{seed}"))
            for seed, sparsity in RUNS]


def test_sac_runs_form_vmapped_groups():
    assert GROUP_KINDS["sac"] is VmappedOffPolicyRuns


def test_runs_differing_in_more_than_seed_and_sparsity_cannot_share_a_program():
    """Checked before any environment is built."""
    other = dataclasses.replace(SMOKE, seed=1, buffer_capacity=4_000)
    with pytest.raises(ConfigError, match="may differ only in seed and target sparsity"):
        make_group([SMOKE, other])


def test_group_learner_acts_and_learns_as_each_run_alone():
    """One warm-up and two training vector steps of two runs (seeds and target sparsities
    differ): the vmapped act and learn of the first run's learner give each run the actions,
    train state and losses of its own learner alone (to float32 rounding), and stacking the
    runs' states then taking a run's slice gives back its state exactly."""
    spec = MultiTaskEnvSpec(task_names=metaworld_task_names("MT10"), obs_shape=(39,),
                            action_dim=4, action_kind="continuous", envs_per_task=1,
                            max_episode_steps=20)
    configs = [dataclasses.replace(SMOKE, seed=seed, sparsity=sparsity)
               for seed, sparsity in RUNS]
    learners = [make_run_learner(config, spec, spec) for config in configs]
    alone = [learner.init(config.seed) for learner, config in zip(learners, configs,
                                                                  strict=True)]
    for k, state in enumerate(alone):
        assert_trees_equal(train_state_of_run(stack_train_states(alone), k), state)
    group = make_group_learner(learners[0])
    states = stack_train_states(alone)
    rng = np.random.default_rng(0)
    shape = (len(RUNS), spec.num_envs)
    for warmup in (True, False, False):
        obs, next_obs = rng.standard_normal((2, *shape, 39), np.float32)
        rewards = rng.uniform(size=shape).astype(np.float32)
        terminated = np.zeros(shape, np.float32)
        states, actions = group.act(states, obs, warmup)
        states, metrics = group.learn(states, Transition(obs, np.asarray(actions), rewards,
                                                         next_obs, terminated), warmup)
        for k, learner in enumerate(learners):
            alone[k], run_actions = learner.act(alone[k], obs[k], warmup)
            np.testing.assert_allclose(actions[k], run_actions, rtol=1e-5, atol=1e-6)
            alone[k], run_metrics = learner.learn(
                alone[k], Transition(obs[k], np.asarray(run_actions), rewards[k], next_obs[k],
                                     terminated[k]), warmup)
            assert_trees_close(jax.tree.map(lambda m, k=k: m[k], metrics), run_metrics,
                               rtol=1e-4, atol=1e-6)
    assert int(states.agent.step) == 2
    for k, state in enumerate(alone):
        assert_trees_close(train_state_of_run(states, k), state, rtol=1e-4, atol=1e-6)


def test_the_learner_acts_with_the_training_envs_task_ids_and_evaluates_with_any():
    """Training envs: one per task; evaluation envs: three per task. ``act`` and ``learn``
    take the training envs' observations (warm-up and past it), ``greedy_act`` the evaluation
    envs' with their ids (each row acts with its own task's head), and acting on the
    evaluation envs' observations is refused, naming the training envs' count."""
    def spec(envs_per_task: int) -> MultiTaskEnvSpec:
        return MultiTaskEnvSpec(task_names=metaworld_task_names("MT10"), obs_shape=(39,),
                                action_dim=4, action_kind="continuous",
                                envs_per_task=envs_per_task, max_episode_steps=20)

    train_spec, eval_spec = spec(1), spec(3)
    learner = make_run_learner(SMOKE, train_spec, eval_spec)
    state = learner.init(0)
    rng = np.random.default_rng(0)
    for warmup in (True, False):
        obs, next_obs = rng.standard_normal((2, train_spec.num_envs, 39), np.float32)
        state, actions = learner.act(state, obs, warmup)
        assert actions.shape == (train_spec.num_envs, 4)
        zeros = np.zeros(train_spec.num_envs, np.float32)
        state, metrics = learner.learn(state, Transition(obs, np.asarray(actions), zeros,
                                                         next_obs, zeros), warmup)
    assert int(state.agent.step) == 1 and np.isfinite(float(metrics["critic_loss"]))
    eval_obs = np.repeat(rng.standard_normal((1, 39), np.float32), eval_spec.num_envs, axis=0)
    greedy = np.asarray(learner.greedy_act(state.agent, eval_obs, eval_spec.env_task_ids))
    assert greedy.shape == (eval_spec.num_envs, 4)
    # The same observation: the copies of a task act alike, the tasks' heads differently.
    per_task = greedy.reshape(10, 3, 4)
    np.testing.assert_array_equal(per_task, np.repeat(per_task[:, :1], 3, axis=1))
    assert len(np.unique(per_task[:, 0], axis=0)) == 10
    with pytest.raises(ValueError, match=r"one observation per training env \(10\); got 30"):
        learner.act(state, eval_obs, False)


@pytest.fixture(scope="module")
def group_and_alone(tmp_path_factory):
    """The two runs trained as a group, and the second run trained alone."""
    root = tmp_path_factory.mktemp("sac-group")
    configs = run_configs(root / "group")
    train_group(configs)
    alone = dataclasses.replace(configs[1], run_dir=str(root / "alone"))
    train(alone)
    return root, configs, alone


@pytest.mark.slow
def test_a_group_writes_the_run_directories_of_its_runs_alone(group_and_alone):
    """The same episodes, events and evaluations; losses and norms to float32 rounding."""
    _, configs, alone = group_and_alone
    group_run = Path(configs[1].run_dir)
    assert_rows_close(deterministic_rows(group_run), deterministic_rows(Path(alone.run_dir)))
    sparsities = [[r["actor_sparsity"] for r in read_metrics(Path(c.run_dir))
                   if "actor_sparsity" in r][-1] for c in configs]
    assert sparsities == [pytest.approx(0.5, abs=0.01), pytest.approx(0.9, abs=0.01)]
    (step, group_state), (alone_step, alone_state) = (final_state(group_run),
                                                      final_state(Path(alone.run_dir)))
    assert step == alone_step == SMOKE.total_env_steps
    # The agents to float32 rounding; the replay buffers hold observations of MuJoCo physics
    # driven by actions that differ by that rounding, so near-zero components drift further.
    assert_trees_close(group_state.agent, alone_state.agent, rtol=1e-4, atol=1e-5)
    assert_trees_close(group_state.buffer, alone_state.buffer, rtol=1e-3, atol=1e-4)
    assert_trees_equal((group_state.rng, group_state.first_nonfinite),
                       (alone_state.rng, alone_state.first_nonfinite))


def interrupted_copy(run_dir: Path, copy: Path) -> Path:
    """A copy of a finished run directory without its final checkpoint (as if the run had been
    stopped after the checkpoint before)."""
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / str(SMOKE.total_env_steps))
    return copy


@pytest.mark.slow
def test_a_resumed_group_ends_as_the_uninterrupted_one(group_and_alone):
    root, configs, _ = group_and_alone
    resumed = [dataclasses.replace(c, run_dir=str(interrupted_copy(
        Path(c.run_dir), root / "resumed" / Path(c.run_dir).name))) for c in configs]
    train_group(resumed, resume=True)
    for config, again in zip(configs, resumed, strict=True):
        assert deterministic_rows(Path(again.run_dir)) == deterministic_rows(Path(config.run_dir))


@pytest.mark.slow
def test_a_run_of_a_group_resumes_alone(group_and_alone):
    """Its checkpoint holds what a run alone checkpoints: resumed alone, it ends as in the group
    (to float32 rounding of batched against unbatched arithmetic)."""
    root, configs, _ = group_and_alone
    run_dir = interrupted_copy(Path(configs[1].run_dir), root / "solo")
    train(dataclasses.replace(configs[1], run_dir=str(run_dir)), resume=True)
    assert_rows_close(deterministic_rows(run_dir), deterministic_rows(Path(configs[1].run_dir)))
