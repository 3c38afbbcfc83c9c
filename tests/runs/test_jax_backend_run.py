"""PPO on the JAX MiniGrid backend: the compiled rollout and update against the host-stepped ones,
and the run's contract (metrics, evaluation, exact resume) on that backend."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mtrl_sparse.agent_kind import EpisodeTracker
from mtrl_sparse.cli import main
from mtrl_sparse.config import MiniGridEnvConfig
from mtrl_sparse.on_policy import OnPolicyRun
from mtrl_sparse.presets import get_preset
from mtrl_sparse.run_dir import read_metrics
from mtrl_sparse.train_args import cpu_devices_for
from support.optional import needs_farama
from support.run_checks import (
    assert_resumes_like_uninterrupted,
    assert_rows_close,
    deterministic_rows,
)

SMOKE = get_preset("minigrid-smoke").config
JAX_SMOKE = dataclasses.replace(SMOKE, env=dataclasses.replace(SMOKE.env, backend="jax"))
JAX_FLAGS = ["--preset", "minigrid-smoke", "--env.backend", "jax"]


def _two_iterations(compiled: bool) -> tuple[list, OnPolicyRun, EpisodeTracker]:
    """Two rollouts and updates of the smoke preset on the jax backend, compiled or with the
    envs stepped from the host; returns the rollouts, the run and its episode tracker."""
    run = OnPolicyRun(JAX_SMOKE)
    if not compiled:
        run.compiled_iteration = None
    run.start()
    episodes = EpisodeTracker(run.task_names, run.num_envs)
    rollouts = []
    for _ in range(2):
        run.iterate(episodes)
        rollouts.append(jax.device_get(run.rollout))
    return rollouts, run, episodes


@pytest.mark.cpu_numbers
@pytest.mark.slow
def test_compiled_rollout_and_update_equal_the_host_stepped_ones():
    """The same transitions (observations, actions, rewards, flags, bootstrap values) and the
    same parameters after two updates: one compiled call per rollout changes no number that
    matters (float fields to float32 summation order)."""
    compiled, fast, fast_episodes = _two_iterations(compiled=True)
    stepped, slow, slow_episodes = _two_iterations(compiled=False)
    for a, b in zip(compiled, stepped, strict=True):
        for field in ("obs", "task_ids", "actions", "rewards", "terminated", "truncated"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        for field in ("log_probs", "values", "truncation_values", "last_values"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-5,
                                       atol=1e-5, err_msg=field)
    assert fast_episodes.dump() == slow_episodes.dump()
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
                 fast.state.actor.params, slow.state.actor.params)
    fast_env, slow_env = fast.env.get_state(), slow.env.get_state()
    assert fast_env == slow_env


def test_presets_run_on_the_jax_backend_and_farama_stays_the_config_default():
    """A stored config without the field (runs from before the jax backend) means farama."""
    assert MiniGridEnvConfig().backend == "farama"
    for name in ("minigrid-mt3", "minigrid-mt5", "minigrid-mt7", "minigrid-quick",
                 "minigrid-smoke"):
        assert get_preset(name).config.env.backend == "jax"


@pytest.mark.cpu_numbers
@pytest.mark.slow
def test_jax_backend_run_logs_evaluates_and_resumes_exactly(tmp_path, capsys):
    """The smoke preset on the jax backend: the same rows as on farama (evaluations included),
    scores in range, and a run resumed from its mid-run checkpoint ends exactly as the
    uninterrupted one."""
    full = tmp_path / "full"
    assert main(["train", *JAX_FLAGS, "--run-dir", str(full),
                 "--checkpoint-every-env-steps", "200"]) == 0
    rows = read_metrics(full)
    assert [r["step"] for r in rows if "policy_loss" in r] == [200, 400, 600]
    evals = [r for r in rows if "eval/normalized_return" in r]
    assert [r["step"] for r in evals] == [400, 600]
    for row in evals:
        values = [v for k, v in row.items() if k.startswith("eval/normalized_return/")]
        assert len(values) == 3 and all(0.0 <= v <= 1.0 + 1e-6 for v in values)
    assert_resumes_like_uninterrupted(full, tmp_path / "interrupted", 600)
    capsys.readouterr()


@pytest.mark.slow
def test_vmapped_runs_write_the_run_directories_of_separate_runs(tmp_path, capsys):
    """``--sparsity A,B --seeds 0-1`` trains four runs in one program; each run directory holds
    the rows of the same run trained alone (batched arithmetic rounds differently: float fields
    to 1e-4 relative, everything counted or evaluated exactly), and the group resumes from its
    checkpoints."""
    group = tmp_path / "group"
    flags = [*JAX_FLAGS, "--method", "gmp", "--checkpoint-every-env-steps", "200"]
    assert main(["train", *flags, "--sparsity", "0.8,0.95", "--seeds", "0-1",
                 "--run-dir", str(group)]) == 0
    names = sorted(p.name for p in group.iterdir())
    assert names == ["sparsity0.8-seed0", "sparsity0.8-seed1", "sparsity0.95-seed0",
                     "sparsity0.95-seed1"]
    alone = tmp_path / "alone"
    assert main(["train", *flags, "--sparsity", "0.95", "--seed", "1", "--run-dir",
                 str(alone)]) == 0
    # The same episodes, actions, events and evaluations; losses and norms to float32 rounding.
    assert_rows_close(deterministic_rows(group / "sparsity0.95-seed1"),
                      deterministic_rows(alone))
    sparsities = {name: [r["actor_sparsity"] for r in read_metrics(group / name)
                         if "actor_sparsity" in r][-1] for name in names}
    assert sparsities["sparsity0.8-seed0"] < sparsities["sparsity0.95-seed0"]
    rows = {name: deterministic_rows(group / name) for name in names}
    for name in names:  # interrupted before the last checkpoint, then resumed as a group
        shutil.rmtree(group / name / "checkpoints" / "600")
    assert main(["train", "--resume", "--run-dir", str(group)]) == 0
    assert {name: deterministic_rows(group / name) for name in names} == rows
    assert "4 runs; compare them" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--seeds", "3-1"], "--seeds '3-1'"),
    (["--seeds", "0,0"], "distinct"),
    (["--seeds", "0-1", "--seed", "2"], "not both"),
    (["--seeds", "0-1"], "need --run-dir"),
    pytest.param(["--seeds", "0-1", "--env.backend", "farama", "--run-dir", "{tmp}/g"],
                 "jax backend", marks=needs_farama),
    (["--env.backend", "jax", "--method", "gmp", "--sparsity", "0,0.9", "--run-dir", "{tmp}/g"],
     "needs a sparsity in (0, 1)"),
])
def test_bad_groups_are_usage_errors_and_write_nothing(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    preset = [] if "--preset" in args else ["--preset", "minigrid-smoke"]
    assert main(["train", *preset, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()


@pytest.mark.slow
def test_vmapped_runs_shard_over_devices(tmp_path):
    """With two (virtual CPU) devices the run axis is split over them, and the runs still write
    what they write alone."""
    group = tmp_path / "group"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    probe = ("import jax, dataclasses; from mtrl_sparse.on_policy_group import "
             "VmappedOnPolicyRuns; from mtrl_sparse.presets import get_preset; "
             "c = get_preset('minigrid-smoke').config; "
             "c = dataclasses.replace(c, env=dataclasses.replace(c.env, backend='jax')); "
             "g = VmappedOnPolicyRuns([dataclasses.replace(c, seed=s) for s in (0, 1)]); "
             "g.start(); leaf = jax.tree.leaves(g.state.actor.params)[0]; "
             "print(len(jax.devices()), len(leaf.sharding.device_set))")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["2", "2"]
    subprocess.run([sys.executable, "-m", "mtrl_sparse.cli", "train", *JAX_FLAGS, "--seeds",
                    "0-1", "--run-dir", str(group), "--no-progress"], env=env, check=True,
                   capture_output=True)
    alone = tmp_path / "alone"
    assert main(["train", *JAX_FLAGS, "--seed", "1", "--run-dir", str(alone)]) == 0
    assert_rows_close(deterministic_rows(group / "seed1"), deterministic_rows(alone))


@pytest.mark.parametrize("runs, cores, devices", [(10, 2, 2), (3, 2, 1), (8, 4, 4), (6, 4, 3),
                                                  (1, 8, 1)])
def test_a_group_splits_over_the_largest_divisor_of_its_runs_within_the_cores(runs, cores,
                                                                               devices):
    assert cpu_devices_for(runs, cores) == devices


WITHOUT_FARAMA = """
import sys
sys.modules["minigrid"] = None  # as if Farama's minigrid were not installed: importing it fails
from mtrl_sparse.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_the_jax_backend_trains_without_farama_minigrid_and_farama_names_its_extra(tmp_path):
    """The default install has no Farama minigrid (the farama extra): the JAX backend trains, the
    farama backend is one line naming the extra, exit 2, no run directory."""
    def train(backend: str, run_dir: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", WITHOUT_FARAMA, "train", "--preset", "minigrid-smoke",
             "--env.backend", backend, "--run-dir", str(run_dir)],
            capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})

    trained = train("jax", tmp_path / "jax")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (tmp_path / "jax" / "finished.json").is_file()
    refused = train("farama", tmp_path / "farama")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "--env.backend farama needs Farama's minigrid" in refused.stderr
    assert "mtrl-sparse[farama]" in refused.stderr
    assert not (tmp_path / "farama").exists()
