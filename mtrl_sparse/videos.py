"""Videos of a run's evaluation policy: episodes per task, recorded apart from training, written
as GIFs into the run directory and shown in TensorBoard.

A video is a separate episode per task (or ``episodes`` of them, one after another in the task's
file), played with the run's evaluation policy on the run's evaluation layouts, after the policy's
state was restored or taken; it never touches the training state, its keys or its envs, so runs
with and without videos log the same numbers.

- MiniGrid (``make_minigrid_recorder``): the episodes run on the JAX MiniGrid in one compiled
  program that records every state; the frames are drawn afterwards, on the host, from the
  recorded states (``minigrid_render``, Farama's pixels). Episode ``i`` of task ``t`` is the run's
  evaluation episode ``i`` of that task (same layout; further layouts from the same key when
  there are more video episodes than evaluation episodes). Runs on Farama's backend record on the
  JAX MiniGrid too (the same rules, tested step for step).
- Meta-World (``record_metaworld``): the evaluation envs' first episodes (one env per task),
  stepped on the host, each step drawn by MuJoCo's offscreen renderer, which needs an OpenGL
  backend chosen with ``MUJOCO_GL`` (``metaworld_renderer_problem``).

Files: ``<run_dir>/videos/step_<S>/<task>.gif`` (``write_videos``; ``video_paths`` lists them, for
loggers that upload files). A GIF holds every frame (an episode of ``n`` steps has ``n + 1``:
the reset state first); Pillow merges identical consecutive frames into one longer frame, so the
frame count of a file is its total duration divided by ``Video.frame_ms``. Frames with at most 256
colours (MiniGrid's) are stored exactly; others are quantised to 256 colours. TensorBoard gets
an image strip per task (``frame_strip``: evenly spaced frames side by side), since tensorboardX's
own videos need moviepy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mtrl_sparse.envs import minigrid_jax as mj
from mtrl_sparse.envs.minigrid_jax_layouts import reset_state
from mtrl_sparse.envs.minigrid_jax_vector import GridVector
from mtrl_sparse.envs.minigrid_render import render_frames
from mtrl_sparse.evaluation import step_episodes
from mtrl_sparse.run_dir import VIDEO_DIR

MINIGRID_FRAME_MS = 150
METAWORLD_FRAME_MS = 40
METAWORLD_FRAME_SIZE = (240, 320)  # (height, width) in pixels
METAWORLD_CAMERA = "corner2"  # mounted upside down in Meta-World's scenes: frames turned 180
STRIP_FRAMES = 8


@dataclass(frozen=True)
class Video:
    """One task's video.

    Attributes:
        frames: (T, H, W, 3) uint8, the episodes one after another, each from its reset state:
            ``T = sum(length + 1 for length in episode_lengths)``.
        episode_lengths: steps of each episode.
        frame_ms: how long each frame shows, in milliseconds.
    """

    frames: np.ndarray
    episode_lengths: tuple[int, ...]
    frame_ms: int


# --- MiniGrid ---------------------------------------------------------------------------------


def make_minigrid_recorder(
    act_with: Callable[..., tuple[jax.Array, Any, Any]], task_names: tuple[str, ...],
    episodes: int, eval_episodes_per_task: int, deterministic: bool,
) -> Callable[[Any, jax.Array, jax.Array], tuple[mj.GridState, jax.Array]]:
    """``record(weights, key, layout_key) -> (states, lengths)``, jitted: ``episodes`` episodes of
    every task played at once with ``act_with(weights, obs, task_ids, key_t, deterministic)``
    (``key_t = fold_in(key, t)`` at step ``t``) until every one has ended.

    Episode ``i`` of task ``t`` is env ``e = t * episodes + i``; its layout is the evaluation's
    episode ``i`` of task ``t`` (``make_compiled_normalized_return``: env
    ``t * eval_episodes_per_task + i`` of the key ``layout_key``). Returns ``states``, a
    ``GridState`` with leading axes (max time limit + 1, num envs): the state of every env after
    each step (its reset state first; an ended env stays as it ended), and ``lengths`` (num envs,)
    int32, the steps of each episode.
    """
    num_tasks = len(task_names)
    tasks = jnp.repeat(jnp.arange(num_tasks, dtype=jnp.int32), episodes)
    layout_index = tasks * eval_episodes_per_task + jnp.tile(jnp.arange(episodes), num_tasks)
    core = GridVector(task_names, num_tasks * episodes)
    horizon = int(core.tables.max_steps.max())

    def record(weights: Any, key: jax.Array, layout_key: jax.Array):
        envs = jax.vmap(lambda w, task: reset_state(task_names, jax.random.fold_in(layout_key, w),
                                                    task))(layout_index, tasks)
        states = jax.tree.map(
            lambda x: jnp.zeros((horizon + 1, *x.shape), x.dtype).at[0].set(x), envs)

        def play(carry):
            envs, ended, lengths, states, t = carry
            envs, _, terminated, truncated, live = step_episodes(
                core, act_with, weights, envs, core.observe(envs), tasks,
                jax.random.fold_in(key, t), deterministic, ended)
            states = jax.tree.map(lambda r, x: r.at[t + 1].set(x), states, envs)
            return (envs, ended | terminated | truncated, lengths + live, states, t + 1)

        start = (envs, jnp.zeros(tasks.shape, bool), jnp.zeros(tasks.shape, jnp.int32), states,
                 jnp.int32(0))
        _, _, lengths, states, _ = jax.lax.while_loop(lambda c: ~c[1].all(), play, start)
        return states, lengths

    return jax.jit(record)


def minigrid_videos(states: mj.GridState, lengths: np.ndarray, task_names: tuple[str, ...],
                    episodes: int) -> Iterator[tuple[str, Video]]:
    """(task, video) of each task from ``make_minigrid_recorder``'s output (fetched to the host),
    rendered one task at a time."""
    states, lengths = jax.device_get((states, lengths))
    for t, name in enumerate(task_names):
        envs = range(t * episodes, (t + 1) * episodes)
        frames = [render_frames(jax.tree.map(lambda x, e=e: x[:lengths[e] + 1, e], states),
                                task_names) for e in envs]
        yield name, Video(np.concatenate(frames), tuple(int(lengths[e]) for e in envs),
                          MINIGRID_FRAME_MS)


# --- Meta-World -------------------------------------------------------------------------------

_RENDER_PROBE = """
import mujoco
model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='.1'/></worldbody></mujoco>")
renderer = mujoco.Renderer(model, 8, 8)
renderer.update_scene(mujoco.MjData(model))
renderer.render()
renderer.close()
print("rendered")
"""


def metaworld_renderer_problem() -> str | None:
    """None when MuJoCo can render offscreen here (tried in a subprocess, so that a failing
    OpenGL backend leaves this process clean); otherwise the line that says what to install."""
    try:
        probe = subprocess.run([sys.executable, "-c", _RENDER_PROBE], capture_output=True,
                               text=True, timeout=120, env=os.environ.copy())
        rendered = probe.returncode == 0 and "rendered" in probe.stdout
    except subprocess.TimeoutExpired:
        rendered = False
    if rendered:
        return None
    backend = os.environ.get("MUJOCO_GL") or "unset"
    return (f"Meta-World videos need MuJoCo's offscreen rendering, which found no working OpenGL "
            f"backend (MUJOCO_GL={backend}); install one and select it: libegl1 (or the NVIDIA "
            "driver) with MUJOCO_GL=egl, or libosmesa6 with MUJOCO_GL=osmesa")


def record_metaworld(greedy_act: Callable[[Any, Any, Any], Any], agent_state: Any, env: Any,
                     episodes: int, camera: str = METAWORLD_CAMERA,
                     size: tuple[int, int] = METAWORLD_FRAME_SIZE) -> dict[str, Video]:
    """``episodes`` episodes of every env of ``env`` (a synchronous ``MetaWorldVectorEnv``, one
    env per task), acting with ``greedy_act(agent_state, obs, task_ids)``; each step drawn from
    ``camera`` at ``size`` (height, width) and turned right side up (Meta-World's corner cameras
    look upside down). Returns task -> video."""
    import mujoco

    spec = env.spec
    scenes = env.mujoco_scenes()
    renderers = [mujoco.Renderer(model, *size) for model, _ in scenes]
    frames: list[list[np.ndarray]] = [[] for _ in scenes]
    lengths: list[list[int]] = [[] for _ in scenes]

    def draw() -> None:
        for (_, data), renderer, into in zip(scenes, renderers, frames, strict=True):
            renderer.update_scene(data, camera=camera)
            into.append(np.ascontiguousarray(np.rot90(renderer.render(), 2)))

    try:
        for _ in range(episodes):
            obs = env.reset()
            draw()
            steps = 0
            done = np.zeros(spec.num_envs, bool)
            while not done.all():
                step = env.step(np.asarray(greedy_act(agent_state, obs, spec.env_task_ids)))
                obs, steps = step.obs, steps + 1
                done = step.terminated | step.truncated
                draw()
            for per_env in lengths:
                per_env.append(steps)
    finally:
        for renderer in renderers:
            renderer.close()
    return {spec.task_names[task]: Video(np.stack(frames[e]), tuple(lengths[e]),
                                         METAWORLD_FRAME_MS)
            for e, task in enumerate(spec.env_task_ids)}


# --- files and TensorBoard --------------------------------------------------------------------


def video_dir(run_dir: Path, step: int) -> Path:
    """Where the videos of the checkpoint (or evaluation) at env step ``step`` go."""
    return run_dir / VIDEO_DIR / f"step_{step}"


def video_paths(run_dir: Path, step: int) -> dict[str, Path]:
    """task -> GIF of the videos written at env step ``step`` (for loggers that upload files,
    e.g. as ``wandb.Video(path)``)."""
    folder = video_dir(run_dir, step)
    return {path.stem: path for path in sorted(folder.glob("*.gif"))}


def _palette_images(frames: np.ndarray) -> list[Any]:
    """Pillow paletted images of ``frames`` (T, H, W, 3) uint8: exact, with one shared palette,
    when they hold at most 256 colours together; each quantised to 256 colours otherwise."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    colours: set[tuple[int, int, int]] = set()
    for image in images:
        counts = image.getcolors(256)  # None: more than 256 colours
        if counts is None:
            break
        colours.update(colour for _, colour in counts)
        if len(colours) > 256:
            break
    else:
        palette = Image.new("P", (1, 1))
        palette.putpalette([value for colour in sorted(colours) for value in colour])
        return [image.quantize(palette=palette, dither=Image.Dither.NONE) for image in images]
    return [image.quantize(256, dither=Image.Dither.NONE) for image in images]


def write_gif(path: Path, video: Video) -> None:
    """``video`` as an endlessly looping GIF at ``path``."""
    first, *rest = _palette_images(video.frames)
    first.save(path, save_all=True, append_images=rest, duration=video.frame_ms, loop=0,
               optimize=False)


def write_videos(run_dir: Path, step: int, videos: Iterable[tuple[str, Video]],
                 on_video: Callable[[str, Video], None] | None = None) -> dict[str, Path]:
    """Write each (task, video) of ``videos`` as ``<run_dir>/videos/step_<step>/<task>.gif``,
    calling ``on_video(task, video)`` after each (to log it elsewhere); returns task -> path."""
    folder = video_dir(run_dir, step)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, video in videos:
        paths[name] = folder / f"{name}.gif"
        write_gif(paths[name], video)
        if on_video is not None:
            on_video(name, video)
    return paths


def frame_strip(frames: np.ndarray, count: int = STRIP_FRAMES) -> np.ndarray:
    """``count`` evenly spaced frames of ``frames`` (T, H, W, 3), the first and the last
    included, side by side: (H, count * W, 3) (fewer when T < count)."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round()
                      .astype(int))
    return np.concatenate(list(frames[picks]), axis=1)
