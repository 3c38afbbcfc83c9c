"""A frame strip of a run's video for the docs: every ``--every``-th frame of a task's GIF, side by
side, as a PNG.

    python scripts/video_strip.py RUN_DIR TASK OUT.png [--step S] [--every 10] [--frames 8]

``RUN_DIR`` holds videos (``mtrl-sparse eval --run-dir RUN_DIR --video``); ``--step``: the step
of the videos (default: the latest written). Frames are counted by duration (Pillow stores
identical consecutive frames as one longer frame).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from mtrl_sparse.run_dir import VIDEO_DIR
from mtrl_sparse.videos import video_paths


def gif_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a GIF as an RGB array, a merged frame repeated as often as its duration
    holds the frame time (the durations' greatest common divisor)."""
    with Image.open(path) as image:
        pairs = [(np.asarray(f.convert("RGB")), f.info["duration"])
                 for f in ImageSequence.Iterator(image)]
    frame_ms = int(np.gcd.reduce([d for _, d in pairs]))
    return [frame for frame, d in pairs for _ in range(d // frame_ms)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("task")
    parser.add_argument("out", type=Path)
    parser.add_argument("--step", type=int, default=None)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    steps = sorted(int(p.name.removeprefix("step_")) for p in (args.run_dir / VIDEO_DIR).iterdir())
    if not steps:
        parser.error(f"{args.run_dir} holds no videos (mtrl-sparse eval --video)")
    paths = video_paths(args.run_dir, steps[-1] if args.step is None else args.step)
    if args.task not in paths:
        parser.error(f"no video of {args.task}; videos: {', '.join(paths)}")
    frames = gif_frames(paths[args.task])[::args.every][:args.frames]
    Image.fromarray(np.concatenate(frames, axis=1)).save(args.out)
    print(f"{len(frames)} frames -> {args.out}")


if __name__ == "__main__":
    main()
