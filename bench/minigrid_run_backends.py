"""A whole MiniGrid PPO run on the JAX backend against the Farama backend, and against its own
update compute, measured in one process.

For each CNN (pooled: a 2x2 max-pool after the first convolution, 64 features into the heads;
un-pooled: the lineage's 1,024), in this order:

1. the run's update compute: ``ppo.update`` of the preset jitted alone and timed on a rollout of
   the preset's shape (compiled and warmed first, median of ``--repeats`` calls), times the run's
   number of rollouts: the floor of any implementation of the run;
2. ``mtrl-sparse train --preset P --env.backend B`` for each backend, from process start to exit
   (imports, compilation, evaluations and checkpoints included), in a subprocess, twice: with an
   empty persistent compilation cache (cold: everything compiled) and again with the cache the
   first run filled (warm: what every later run of the preset, a sweep's next seed or a resume
   costs).

Prints the wall times, farama / jax (target >= 2x) and jax / update compute (target <= 1.3x),
cold and warm.
Nothing else should run on the machine meanwhile.

Usage: python bench/minigrid_run_backends.py [--preset minigrid-mt3] [--cnn pooled unpooled]
       [--total-steps N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from mtrl_sparse.agent_kind import EpisodeTracker
from mtrl_sparse.host_memory import reuse_freed_memory
from mtrl_sparse.on_policy import OnPolicyRun
from mtrl_sparse.presets import get_preset
from mtrl_sparse.train_args import COMPILE_CACHE_ENV

POOLING_FLAG = {"pooled": "--ppo.cnn-pooling", "unpooled": "--ppo.no-cnn-pooling"}


def update_compute_seconds(preset: str, pooled: bool, total_steps: int | None,
                           repeats: int) -> tuple[float, int]:
    """(seconds of the run's updates alone, rollouts): one update timed, times the rollouts."""
    config = get_preset(preset).config
    config = dataclasses.replace(
        config, ppo=dataclasses.replace(config.ppo, cnn_pooling=pooled),
        env=dataclasses.replace(config.env, backend="jax"),
        total_env_steps=total_steps or config.total_env_steps)
    run = OnPolicyRun(config)
    run.start()
    run.iterate(EpisodeTracker(run.task_names, run.num_envs))  # a real rollout of the shape
    update = jax.jit(run.ppo.update)
    state, rollout, key = run.state, run.rollout, jax.random.PRNGKey(0)
    jax.block_until_ready(update(state, rollout, key))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(update(state, rollout, key))
        times.append(time.perf_counter() - start)
    run.close()
    return statistics.median(times) * config.rollouts(), config.rollouts()


def run_seconds(preset: str, cnn: str, backend: str, total_steps: int | None,
                cache: Path) -> float:
    """Wall time of ``mtrl-sparse train`` in a fresh process, compilation cache ``cache``."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "mtrl_sparse.cli", "train", "--preset", preset,
                   POOLING_FLAG[cnn], "--env.backend", backend, "--no-progress",
                   "--run-dir", str(Path(tmp) / "run"),
                   *(["--total-steps", str(total_steps)] if total_steps else [])]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True,
                       env={**os.environ, COMPILE_CACHE_ENV: str(cache)})
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="minigrid-mt3")
    parser.add_argument("--cnn", nargs="+", default=["pooled", "unpooled"],
                        choices=list(POOLING_FLAG))
    parser.add_argument("--total-steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.preset}, {os.cpu_count()} CPU cores, {jax.devices()[0].platform}")
    print(f"{'cnn':9} {'cache':5} {'updates s':>9} {'farama s':>9} {'jax s':>7} "
          f"{'farama/jax':>10} {'jax/updates':>11}")
    for cnn in args.cnn:
        updates, _ = update_compute_seconds(args.preset, cnn == "pooled", args.total_steps,
                                            args.repeats)
        seconds = {}
        for backend in ("farama", "jax"):
            with tempfile.TemporaryDirectory() as cache:
                for state in ("cold", "warm"):
                    seconds[backend, state] = run_seconds(args.preset, cnn, backend,
                                                          args.total_steps, Path(cache))
        for state in ("cold", "warm"):
            farama, fast = seconds["farama", state], seconds["jax", state]
            print(f"{cnn:9} {state:5} {updates:9.1f} {farama:9.1f} {fast:7.1f} "
                  f"{farama / fast:9.2f}x {fast / updates:10.2f}x", flush=True)


if __name__ == "__main__":
    reuse_freed_memory()  # as the CLI does: time what a run gets
    main()
