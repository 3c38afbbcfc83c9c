"""What clusters do to runs besides SIGKILL (``test_kills.py``): a full disk, preemption
signals, envs that die or raise, non-finite observations and rewards, two commands on one run
or one sweep, Ray tasks that fail. Each stops with one line and loses nothing committed; where
the run can go on, resuming ends it with an uninterrupted run's rows."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtrl_sparse import run_dir as run_dir_module
from mtrl_sparse.agent_kind import check_finite_env_values
from mtrl_sparse.cli import main
from mtrl_sparse.envs.minigrid import MiniGridVectorEnv
from mtrl_sparse.off_policy import OffPolicyRun
from mtrl_sparse.on_policy import OnPolicyRun
from mtrl_sparse.run_dir import read_metrics
from mtrl_sparse.stops import NonFiniteLossError, OutOfSpaceError, is_out_of_space
from mtrl_sparse.sweep import SweepRun, execute_ray
from support.cli import run_cli
from support.faults import TESTS_DIR
from support.run_checks import MINIGRID_CHECKPOINTED, complete_checkpoints, deterministic_rows

pytestmark = pytest.mark.slow

ARGS = MINIGRID_CHECKPOINTED
SAC_ARGS = ["--preset", "mt10-smoke", "--total-steps", "600", "--checkpoint-every-env-steps",
            "200", "--eval-every-env-steps", "600", "--no-progress"]



def one_stop_line(err: str, *needles: str) -> str:
    """The one line a stopped run prints (besides progress output), holding every needle."""
    lines = [line for line in err.strip().splitlines() if line.startswith("mtrl-sparse")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- 3. a full disk -------------------------------------------------------------------------------

def test_a_full_disk_during_a_checkpoint_stops_with_one_line_and_resumes(
        whole_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    save = ocp.CheckpointManager.save

    def filling_save(self, step, *args, **kwargs):
        if step == 400:  # the disk fills halfway through writing this checkpoint
            partial = Path(self.directory) / f"{step}.orbax-checkpoint-tmp-1"
            partial.mkdir()
            (partial / "half-written").write_bytes(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", filling_save)
    code, _, err = run_cli(capsys, ["train", *ARGS, "--run-dir", str(run)])
    assert code == OutOfSpaceError.exit_code == 74
    one_stop_line(err, "no space left on device", "the checkpoint at env step 400",
                  str(run / "checkpoints"), "MiB needed", "free", "intact", "--auto-resume")
    assert complete_checkpoints(run) == [200]
    assert not list((run / "checkpoints").glob("*tmp*"))  # the partial one is gone
    assert max(r["step"] for r in read_metrics(run)) == 400  # rows up to the failure kept

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)  # space is back
    assert main(["train", "--auto-resume", "--run-dir", str(run)]) == 0
    assert deterministic_rows(run) == deterministic_rows(whole_run)


def test_a_full_disk_during_a_metrics_row_stops_with_one_line_and_resumes(
        whole_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    init = run_dir_module.MetricsLogger.__init__

    class FillingFile:
        """The metrics file of a disk that fills after 3 rows: the 4th is written in part."""

        def __init__(self, file):
            self.file, self.rows = file, 0

        def write(self, line):
            self.rows += 1
            if self.rows > 3:
                self.file.write(line[:10])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(line)

        def close(self):
            self.file.close()

    def filling_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._jsonl = FillingFile(self._jsonl)

    monkeypatch.setattr(run_dir_module.MetricsLogger, "__init__", filling_init)
    code, _, err = run_cli(capsys, ["train", *ARGS, "--run-dir", str(run)])
    assert code == 74
    one_stop_line(err, "no space left on device", "a metrics row", str(run / "metrics.jsonl"),
                  "needed", "intact")
    assert complete_checkpoints(run)  # what was committed before stays
    monkeypatch.setattr(run_dir_module.MetricsLogger, "__init__", init)
    assert main(["train", "--auto-resume", "--run-dir", str(run)]) == 0
    assert deterministic_rows(run) == deterministic_rows(whole_run)


def test_out_of_space_is_found_through_wrapping_errors():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise ValueError("TensorStore write failed") from inner
    except ValueError as outer:
        assert is_out_of_space(outer)
    assert is_out_of_space(ValueError("WRITE failed: No space left on device [errno 28]"))
    assert not is_out_of_space(OSError(errno.EACCES, "Permission denied"))


# --- 4. preemption signals ------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_preemption_signal_checkpoints_stops_75_and_resumes_to_the_same_rows(
        whole_run, tmp_path, capsys, monkeypatch, signum):
    run = tmp_path / "run"
    iterate = OnPolicyRun.iterate
    calls = []

    def signalled_iterate(self, episodes):
        calls.append(1)
        if len(calls) == 2:  # the scheduler's notice arrives during the second rollout,
            os.kill(os.getpid(), signum)  # to the process and again (forwarded by a parent)
            os.kill(os.getpid(), signum)
        return iterate(self, episodes)

    monkeypatch.setattr(OnPolicyRun, "iterate", signalled_iterate)
    handler_before = signal.getsignal(signum)
    code, _, err = run_cli(capsys, ["train", *ARGS, "--checkpoint-every-env-steps", "600",
                                    "--run-dir", str(run)])
    assert code == 75
    one_stop_line(err, signal.Signals(signum).name, "checkpointed at env step 400",
                  "--auto-resume", "requeue")
    assert complete_checkpoints(run) == [400]  # not a scheduled one: written on the signal
    assert len(calls) == 2 and not (run / "finished.json").exists()
    assert signal.getsignal(signum) == handler_before  # the run's handler is gone with it
    monkeypatch.setattr(OnPolicyRun, "iterate", iterate)
    assert main(["train", "--auto-resume", "--run-dir", str(run)]) == 0
    assert deterministic_rows(run) == deterministic_rows(whole_run)


def cli_process(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "mtrl_sparse.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_until(condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_sweep_told_to_stop_checkpoints_its_runs_exits_75_and_resumes(whole_run, tmp_path):
    out = tmp_path / "sweep"
    sweep = ["sweep", "--preset", "minigrid-smoke", "--method", "dense", "--seeds", "1",
             "--workers", "1", "--out", str(out), "--checkpoint-every-env-steps", "600"]
    process = cli_process(sweep)
    wait_until(lambda: len(read_metrics(out / "dense" / "seed0")) >= 1)  # a worker trains
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr.decode()
    assert time.monotonic() - started < 60  # at the next rollout's end, not the run's
    assert "SIGTERM" in stderr.decode() and "the same command resumes" in stderr.decode()
    run = out / "dense" / "seed0"
    assert complete_checkpoints(run) and not (run / "finished.json").exists()
    resumed = cli_process(sweep)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr.decode()
    assert deterministic_rows(run) == deterministic_rows(whole_run)


# --- 5. environments that die or raise ------------------------------------------------------------

def test_a_killed_env_worker_is_named_with_its_task_and_the_run_resumes(tmp_path, capsys,
                                                                      monkeypatch):
    run = tmp_path / "run"
    args = [*SAC_ARGS, "--env.vector-strategy", "async"]
    iterate = OffPolicyRun.iterate
    calls = []

    def iterate_then_kill(self, episodes):
        calls.append(1)
        if len(calls) == 30:  # after the first checkpoint (20 vector steps of 10 envs)
            os.kill(self.env._envs.processes[3].pid, signal.SIGKILL)
            time.sleep(0.2)
        return iterate(self, episodes)

    monkeypatch.setattr(OffPolicyRun, "iterate", iterate_then_kill)
    code, _, err = run_cli(capsys, ["train", *args, "--run-dir", str(run)])
    assert code == 1
    one_stop_line(err, "the worker process of env 3 (task", "died (killed by SIGKILL)",
                  "intact", "--auto-resume")
    assert complete_checkpoints(run) == [200]
    monkeypatch.setattr(OffPolicyRun, "iterate", iterate)
    assert main(["train", "--auto-resume", "--run-dir", str(run)]) == 0
    assert complete_checkpoints(run)[-1] == 600


def test_an_env_that_raises_is_named_with_its_task(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    iterate = OffPolicyRun.iterate

    def break_env_5(self, episodes):
        sub = self.env._envs.envs[5].unwrapped
        if not hasattr(sub, "_broken"):
            def raising_step(action):
                raise RuntimeError("mjWARN: simulation unstable")
            sub._broken = True
            sub.step = raising_step
        return iterate(self, episodes)

    monkeypatch.setattr(OffPolicyRun, "iterate", break_env_5)
    code, _, err = run_cli(capsys, ["train", *SAC_ARGS, "--run-dir", str(run)])
    assert code == 1
    one_stop_line(err, "env 5 (task", "raised in step", "RuntimeError",
                  "simulation unstable")


# --- 6. non-finite observations and rewards -------------------------------------------------------

def test_non_finite_env_values_are_named_by_quantity_task_env_and_step():
    obs = np.zeros((4, 3), np.float32)
    reward = np.zeros(4, np.float32)
    names = ("a", "b")
    check_finite_env_values(obs, reward, np.array([0, 0, 1, 1]), names, 40)  # all finite
    obs[2, 1] = np.nan
    with pytest.raises(NonFiniteLossError, match=r"non-finite observation from task b \(env 2\) "
                                                 r"at env step 40"):
        check_finite_env_values(obs, reward, np.array([0, 0, 1, 1]), names, 40)
    obs[2, 1] = 0
    reward[1] = np.inf
    with pytest.raises(NonFiniteLossError, match=r"non-finite reward from task a \(env 1\)"):
        check_finite_env_values(obs, reward, np.array([0, 0, 1, 1]), names, 40)
    images = np.zeros((4, 7, 7, 3), np.uint8)  # integer observations: finite by their type
    check_finite_env_values(images, np.zeros(4, np.float32), np.zeros(4, int), names, 40)


def test_a_nan_reward_stops_the_run_at_its_step_keeping_earlier_checkpoints(
        tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    step = MiniGridVectorEnv.step
    env_steps, poisoned = [0], []

    def nan_reward_after_the_first_checkpoint(self, actions):
        result = step(self, actions)
        env_steps[0] += self.spec.num_envs
        if env_steps[0] > 250 and not poisoned:
            result.reward[2] = np.nan
            poisoned.append(env_steps[0])
        return result

    monkeypatch.setattr(MiniGridVectorEnv, "step", nan_reward_after_the_first_checkpoint)
    code, _, err = run_cli(capsys, ["train", *ARGS, "--env.backend", "farama", "--run-dir",
                                    str(run)])
    assert code == 1
    line = one_stop_line(err, "non-finite reward from task",
                         f"(env 2) at env step {poisoned[0]}",
                         "the checkpoints before it are intact")
    assert "MiniGrid-" in line
    assert complete_checkpoints(run) == [200]


# --- 8. two commands on one run or one sweep ------------------------------------------------------

def test_a_second_train_on_a_live_run_is_refused_and_the_first_is_undisturbed(
        whole_run, tmp_path, capsys):
    run = tmp_path / "run"
    first = cli_process(["train", *ARGS, "--run-dir", str(run)])
    wait_until(lambda: (run / "config.json").is_file())
    for second in (["train", "--resume", "--run-dir", str(run)],
                   ["train", "--auto-resume", "--run-dir", str(run)]):
        if first.poll() is not None:
            break
        code, _, err = run_cli(capsys, second)
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and "in use by another live process" in err
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr.decode()
    assert deterministic_rows(run) == deterministic_rows(whole_run)


def test_a_second_sweep_on_a_live_out_is_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    sweep = ["sweep", "--preset", "minigrid-smoke", "--method", "dense", "--seeds", "1",
             "--workers", "1", "--out", str(out)]
    first = cli_process(sweep)
    try:
        wait_until(lambda: (out / "sweep.json").is_file())
        code, _, err = run_cli(capsys, sweep)
        assert code == 2
        assert err.strip().splitlines() == [
            f"mtrl-sparse sweep: error: --out {out} is being run by another live sweep "
            "command; wait for it to end (or stop it) before running it again"]
    finally:
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr.decode()
    assert (out / "dense" / "seed0" / "finished.json").is_file()


# --- 7. Ray -------------------------------------------------------------------------------------

def test_ray_retries_killed_workers_then_lists_the_group_as_failed(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    out.mkdir()
    groups = [[SweepRun("dense", None, seed)] for seed in range(3)]

    def command(out: Path, group: list[SweepRun]) -> list[str]:
        """Seed 0 succeeds; seed 1's worker is killed once, then succeeds; seed 2's always."""
        seed = group[0].seed
        marker = out / f"attempts-{seed}"
        script = (f"import os, pathlib, signal\n"
                  f"m = pathlib.Path({str(marker)!r}); n = len(m.read_text()) if m.exists() "
                  f"else 0\nm.write_text('x' * (n + 1))\n"
                  f"if {seed} == 2 or ({seed} == 1 and n == 0): "
                  f"os.kill(os.getpid(), signal.SIGKILL)\n")
        return [sys.executable, "-c", script]

    outcomes = execute_ray(out, groups, None, lambda g: 1, 0, lambda *_: None, command=command)
    errors = {o.group[0].seed: o.error for o in outcomes}
    assert errors[0] is None and errors[1] is None
    assert errors[2] is not None and "after 3 retries" in errors[2]
    assert (out / "attempts-1").read_text() == "xx"
    assert (out / "attempts-2").read_text() == "x" * 4  # the first try and 3 retries
