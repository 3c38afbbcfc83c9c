"""Multi-task PPO on MiniGrid's Farama backend against its env-only floor, measured in one process.

(The presets run on the JAX backend; ``bench/minigrid_run_backends.py`` compares the two.)

1. The env-only floor: the preset's vector env setup (same benchmark, workers, strategy, seed)
   stepped with uniformly random actions for the preset's whole budget of env steps, resets
   included; timed before and after the run, and averaged.
2. The unchanged preset from process start to exit: ``mtrl-sparse train --preset NAME`` in a
   subprocess (imports, compilation, evaluation and checkpoint included).

Prints both wall times and their ratio (target: the run <= 2x the floor, and <= 5 minutes on 2
cores for ``minigrid-mt3``).

With ``--warm-cache``, also the same run with JAX's persistent compilation cache filled by an
earlier run (``JAX_COMPILATION_CACHE_DIR``), as every run of a sweep after the first sees it.

Usage: python bench/ppo_minigrid.py [--preset minigrid-mt3] [--method dense] [--sparsity 0]
       [--warm-cache]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mtrl_sparse.envs.minigrid import MiniGridVectorEnv
from mtrl_sparse.host_memory import reuse_freed_memory
from mtrl_sparse.presets import get_preset


def env_floor_seconds(benchmark: str, num_envs: int, strategy: str, seed: int,
                      env_steps: int) -> float:
    """Wall time of ``env_steps`` random-action env steps through the training env setup."""
    env = MiniGridVectorEnv(benchmark, num_envs, seed, strategy)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    env.reset()
    for _ in range(env_steps // num_envs):
        step = env.step(rng.integers(0, env.spec.action_dim, num_envs))
        done = step.terminated | step.truncated
        if done.any():
            env.reset_done(done)
    seconds = time.perf_counter() - start
    env.close()
    return seconds


def timed_run(args: argparse.Namespace, run_dir: Path, env: dict[str, str]) -> tuple[float, str]:
    """Wall time and stdout of ``mtrl-sparse train`` of the preset in a fresh process."""
    command = [sys.executable, "-m", "mtrl_sparse.cli", "train", "--preset", args.preset,
               "--method", args.method, "--sparsity", args.sparsity, "--env.backend", "farama",
               "--run-dir", str(run_dir), "--no-progress"]
    start = time.perf_counter()
    output = subprocess.run(command, check=True, capture_output=True, text=True,
                            env={**os.environ, **env}).stdout
    return time.perf_counter() - start, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="minigrid-mt3")
    parser.add_argument("--method", default="dense")
    parser.add_argument("--sparsity", default="0")
    parser.add_argument("--warm-cache", action="store_true",
                        help="also time a run whose programs come from JAX's persistent "
                             "compilation cache (as every run of a sweep after the first)")
    args = parser.parse_args()
    config = get_preset(args.preset).config
    env_steps = config.rollouts() * config.ppo.rollout_env_steps

    def floor_seconds() -> float:
        return env_floor_seconds(config.env.benchmark, config.env.num_envs,
                                 config.env.vector_strategy, config.seed, env_steps)

    floor_before = floor_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        run, output = timed_run(args, Path(tmp) / "run", {})
        if args.warm_cache:  # a first run fills JAX's persistent compilation cache, then time one
            cache = {"JAX_COMPILATION_CACHE_DIR": str(Path(tmp) / "jax-cache")}
            timed_run(args, Path(tmp) / "fill", cache)
            warm, _ = timed_run(args, Path(tmp) / "warm", cache)
    floor_after = floor_seconds()  # the host's speed drifts: the floor is timed on both sides
    floor = (floor_before + floor_after) / 2
    parts = [line for line in output.splitlines() if line.startswith("wall time:")]

    print(f"PPO on MiniGrid {config.env.benchmark} ({args.preset}, method {args.method}, "
          f"sparsity {args.sparsity}): {env_steps} env steps, {config.env.num_envs} "
          f"{config.env.vector_strategy} env workers")
    print(f"  env-only floor (random actions): {floor:8.1f} s = {env_steps / floor:,.0f} "
          f"env-steps/s (mean of {floor_before:.1f} s before and {floor_after:.1f} s after)")
    print(f"  whole run, process start to exit: {run:7.1f} s = {env_steps / run:,.0f} env-steps/s")
    if parts:  # the loop's own breakdown (env: inside the envs; agent: policy calls, updates
        # and their bookkeeping; compile: the first update; the rest of the run is imports,
        # setup and compilation of the policy)
        print(f"  run's {parts[0]}")
    if args.warm_cache:
        print(f"  with a warm compilation cache:    {warm:7.1f} s (run / floor {warm / floor:.2f})")
    verdict = "PASS" if run <= 2 * floor else "FAIL"
    print(f"  run / floor: {run / floor:.2f} (target <= 2: {verdict}); "
          f"run <= 5 min: {'PASS' if run <= 300 else 'FAIL'}")


if __name__ == "__main__":
    reuse_freed_memory()  # as the CLI does: time what a run gets
    main()
