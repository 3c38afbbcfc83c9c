"""Videos of trained policies: ``eval --video`` and ``train --video-every-env-steps``.

On a MiniGrid smoke run: one GIF per task, its frame count the episode's length + 1 (counted by
duration, since Pillow merges identical consecutive frames), its first frame Farama's picture of
the evaluation's first layout of the task (drawn independently from the layout generator), every
frame the picture of the recorded state after that many steps, the episode over at its last
frame; videos during training leave every metrics row as it was. Meta-World: GIFs where MuJoCo
finds an offscreen OpenGL backend (in a subprocess with ``MUJOCO_GL`` set), skipped with the
reason otherwise. Bad input: one line, exit 2, nothing written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image, ImageSequence

from mtrl_sparse.agent_kind import eval_env_seed
from mtrl_sparse.checkpointing import Checkpointer
from mtrl_sparse.cli import main
from mtrl_sparse.envs import minigrid_jax as mj
from mtrl_sparse.envs.minigrid_jax_layouts import reset_state
from mtrl_sparse.envs.minigrid_render import render_frames
from mtrl_sparse.presets import PRESETS
from mtrl_sparse.run_dir import read_config, write_config
from mtrl_sparse.run_loop import AGENT_KINDS
from mtrl_sparse.videos import (
    METAWORLD_FRAME_MS,
    MINIGRID_FRAME_MS,
    frame_strip,
    make_minigrid_recorder,
    video_paths,
)
from support.cli import assert_usage_error, run_cli
from support.run_checks import MINIGRID_CHECKPOINTED, deterministic_rows


def gif_frames(path: Path) -> tuple[list[np.ndarray], list[int]]:
    """The frames of a GIF as RGB arrays and their durations in milliseconds."""
    with Image.open(path) as image:
        frames = [(np.asarray(f.convert("RGB")), f.info["duration"])
                  for f in ImageSequence.Iterator(image)]
    return [f for f, _ in frames], [d for _, d in frames]


def expanded(frames: list[np.ndarray], durations: list[int], frame_ms: int) -> np.ndarray:
    """The frames with every merged frame repeated as often as its duration says."""
    assert all(d % frame_ms == 0 for d in durations), durations
    return np.stack([f for f, d in zip(frames, durations, strict=True)
                     for _ in range(d // frame_ms)])


@pytest.fixture(scope="module")
def video_run(tmp_path_factory) -> Path:
    """``whole_run``'s config with videos at every evaluation (every 200 env steps)."""
    run = tmp_path_factory.mktemp("video") / "run"
    assert main(["train", *MINIGRID_CHECKPOINTED, "--video-every-env-steps", "200",
                 "--run-dir", str(run)]) == 0
    return run


@pytest.mark.slow
def test_videos_during_training_leave_every_metrics_row_unchanged(video_run, whole_run):
    assert deterministic_rows(video_run) == deterministic_rows(whole_run)
    evaluated = sorted({row["step"] for row in deterministic_rows(video_run)
                        if "eval/normalized_return" in row})
    written = sorted(int(p.name.removeprefix("step_")) for p in (video_run / "videos").iterdir())
    assert written == evaluated and evaluated
    tasks = read_config(video_run).task_names()
    for step in written:
        assert sorted(video_paths(video_run, step)) == sorted(tasks)
    assert not (whole_run / "videos").exists()
    events = b"".join(p.read_bytes() for p in (video_run / "tb").iterdir())
    assert all(f"video/{task}".encode() in events for task in tasks)


@pytest.mark.slow
def test_eval_video_writes_one_gif_per_task_of_the_policy(video_run, capsys):
    code, out, err = run_cli(capsys, ["eval", "--run-dir", str(video_run), "--step", "400",
                                      "--video", "--episodes", "2"])
    assert code == 0, err
    config = read_config(video_run)
    tasks = config.task_names()
    paths = video_paths(video_run, 400)
    assert sorted(paths) == sorted(tasks)
    assert str(video_run / "videos" / "step_400") in out

    # the episodes again, from the checkpoint: the recorded states of every step
    kind = AGENT_KINDS[config.AGENT](config)
    checkpointer = Checkpointer(video_run / "checkpoints", config.keep_checkpoints, None)
    state, _ = checkpointer.restore(400, kind.abstract_state())
    checkpointer.close()
    env_cfg = config.env
    record = make_minigrid_recorder(kind.ppo.act_with, tasks, 2, env_cfg.eval_episodes_per_task,
                                    env_cfg.eval_deterministic)
    states, lengths = jax.device_get(record(
        kind.acting_weights(state), jax.random.fold_in(jax.random.PRNGKey(config.seed), 400),
        jax.random.PRNGKey(eval_env_seed(config.seed))))
    kind.close()
    layout_key = jax.random.PRNGKey(eval_env_seed(config.seed))
    for t, name in enumerate(tasks):
        frames = expanded(*gif_frames(paths[name]), MINIGRID_FRAME_MS)
        start = 0
        for i in range(2):
            env = 2 * t + i
            length = int(lengths[env])
            episode = jax.tree.map(lambda x, e=env, n=length: x[:n + 1, e], states)
            assert np.array_equal(episode.step_count, np.arange(length + 1))
            _assert_ended(episode, length, name)
            # first frame: the evaluation's episode i of the task, drawn from its layout
            reset = reset_state(tasks, jax.random.fold_in(
                layout_key, t * env_cfg.eval_episodes_per_task + i), np.int32(t))
            first = render_frames(jax.tree.map(lambda x: np.asarray(x)[None], reset), tasks)[0]
            assert np.array_equal(frames[start], first)
            assert np.array_equal(frames[start:start + length + 1],
                                  render_frames(episode, tasks))
            start += length + 1
        assert len(frames) == start  # frame count: each episode's length + 1


@pytest.mark.slow
def test_vmapped_runs_write_each_run_s_videos(tmp_path, video_run):
    """A group of two seeds in one program: each run directory gets its own videos, and seed 0's
    episodes are as long as the same run's alone (the same policy and layouts)."""
    group = tmp_path / "group"
    assert main(["train", *MINIGRID_CHECKPOINTED, "--seeds", "0-1", "--video-every-env-steps",
                 "200", "--run-dir", str(group)]) == 0
    tasks = read_config(video_run).task_names()
    for seed in (0, 1):
        assert sorted(video_paths(group / f"seed{seed}", 600)) == sorted(tasks)
    for name, path in video_paths(video_run, 600).items():
        alone = sum(gif_frames(path)[1])
        assert sum(gif_frames(video_paths(group / "seed0", 600)[name])[1]) == alone


def _assert_ended(episode: mj.GridState, length: int, name: str) -> None:
    """The episode's last state ends it: the time limit, or the agent on a goal or in lava, at
    Memory's end cells, or RedBlueDoors' blue door open."""
    rules = mj.TASK_RULES[name]
    if length == rules.max_steps:
        return
    assert 0 < length < rules.max_steps
    x, y = episode.agent_pos[-1]
    kind = episode.grid[-1, x, y, 0]
    marks = episode.marks[-1]
    blue = marks[1]
    ended = (kind in (mj.GOAL, mj.LAVA)
             or (rules.rule == mj.RULE_MEMORY and any((marks == (x, y)).all(axis=1)))
             or (rules.rule == mj.RULE_RED_BLUE_DOORS
                 and episode.grid[-1, blue[0], blue[1], 2] == mj.OPEN))
    assert ended, (name, length)


def test_frame_strip_takes_evenly_spaced_frames_first_and_last():
    frames = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1) * np.ones((1, 2, 3, 3), np.uint8)
    strip = frame_strip(frames, count=5)
    assert strip.shape == (2, 15, 3)
    assert strip[0, ::3, 0].tolist() == [0, 5, 10, 14, 19]
    assert frame_strip(frames[:2], count=5).shape == (2, 6, 3)


# --- bad input --------------------------------------------------------------------------------


@pytest.fixture
def minigrid_run_dir(tmp_path) -> Path:
    """A run directory with a MiniGrid smoke config and nothing else (no checkpoint)."""
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, PRESETS["minigrid-smoke"].config, "minigrid-smoke")
    return run


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("args, needle", [
    (["--video", "--episodes", "0"], "--episodes must be a positive integer"),
    (["--episodes", "2"], "add --video"),
    (["--vidoe"], "--vidoe"),
])
def test_bad_video_options_are_one_line_and_write_nothing(capsys, minigrid_run_dir, args,
                                                          needle):
    before = _listing(minigrid_run_dir)
    assert_usage_error(capsys, ["eval", "--run-dir", str(minigrid_run_dir), *args], needle)
    assert _listing(minigrid_run_dir) == before


def test_a_negative_video_interval_is_refused(capsys, tmp_path):
    run = tmp_path / "run"
    assert_usage_error(capsys, ["train", "--preset", "minigrid-smoke", "--no-progress",
                                "--video-every-env-steps", "-5", "--run-dir", str(run)],
                       "--video-every-env-steps")
    assert not run.exists()


NO_BACKEND = {"MUJOCO_GL": "no-such-backend"}
"""An environment where MuJoCo cannot render (an unknown backend: refused on any machine)."""


@pytest.mark.slow
def test_metaworld_video_without_a_renderer_is_one_line_naming_what_to_install(
        capsys, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, PRESETS["mt10-smoke"].config, "mt10-smoke")
    before = _listing(run)
    monkeypatch.setenv("MUJOCO_GL", NO_BACKEND["MUJOCO_GL"])
    line = assert_usage_error(capsys, ["eval", "--run-dir", str(run), "--video"],
                              "MUJOCO_GL=egl", "libegl1", "libosmesa6")
    assert "MUJOCO_GL=no-such-backend" in line
    assert _listing(run) == before
    fresh = tmp_path / "fresh"
    assert_usage_error(capsys, ["train", "--preset", "mt10-smoke", "--no-progress",
                                "--video-every-env-steps", "40", "--run-dir", str(fresh)],
                       "--video-every-env-steps", "MUJOCO_GL=egl")
    assert not fresh.exists()


# --- Meta-World where MuJoCo can render -------------------------------------------------------


def _working_backend() -> str | None:
    """The first of MUJOCO_GL=egl / osmesa with which MuJoCo renders offscreen here."""
    from mtrl_sparse.videos import _RENDER_PROBE

    for backend in ("egl", "osmesa"):
        probe = subprocess.run([sys.executable, "-c", _RENDER_PROBE], capture_output=True,
                               text=True, timeout=120, env={**os.environ, "MUJOCO_GL": backend})
        if probe.returncode == 0:
            return backend
    return None


@pytest.mark.slow
def test_metaworld_videos_render_every_step_of_every_task_and_change_no_row(tmp_path):
    backend = _working_backend()
    if backend is None:
        pytest.skip("no offscreen OpenGL backend for MuJoCo here (MUJOCO_GL=egl needs libegl1 "
                    "or the NVIDIA driver, MUJOCO_GL=osmesa libosmesa6)")
    run = tmp_path / "run"
    env = {**os.environ, "MUJOCO_GL": backend}
    cli = [sys.executable, "-m", "mtrl_sparse.cli"]
    trained = subprocess.run([*cli, "train", "--preset", "mt10-smoke", "--no-progress",
                              "--video-every-env-steps", "40", "--run-dir", str(run)],
                             capture_output=True, text=True, env=env, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    plain = tmp_path / "plain"  # the same run without videos: the same rows
    assert main(["train", "--preset", "mt10-smoke", "--no-progress", "--run-dir", str(plain)]) == 0
    assert deterministic_rows(run) == deterministic_rows(plain)
    config = read_config(run)
    steps = sorted(int(p.name.removeprefix("step_")) for p in (run / "videos").iterdir())
    assert steps
    evaluated = subprocess.run([*cli, "eval", "--run-dir", str(run), "--video"],
                               capture_output=True, text=True, env=env, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    tasks = config.task_names()
    paths = video_paths(run, steps[-1])
    assert sorted(paths) == sorted(tasks)
    for path in paths.values():
        frames, durations = gif_frames(path)
        assert sum(durations) // METAWORLD_FRAME_MS == config.env.max_episode_steps + 1
        assert frames[0].shape == (240, 320, 3)
        assert frames[0].std() > 10  # a scene, not a blank image
