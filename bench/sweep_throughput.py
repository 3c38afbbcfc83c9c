"""Wall time of a whole sweep of K runs on this machine, by how the sweep executes them, measured
in one benchmark process (each sweep a ``mtrl-sparse sweep`` subprocess, process start to exit):

- ``sequential``: ``--group-size 1 --workers 1``, one run after another, each using every core;
- ``vmapped``: ``--group-size K --workers 1``, one vmapped program split over one XLA CPU device
  per core;
- ``pinned groups``: ``--group-size K/cores --workers cores``, one worker per core, each pinned
  to its core and running a vmapped group (the local backend's default on a CPU);
- ``pinned runs``: ``--group-size 1 --workers cores``, one run per core at a time.

Each configuration runs twice into fresh directories sharing one compilation cache: the first
fills the cache, the second is timed (as every later sweep of the preset). Prints the seconds and
the speed-up over ``sequential``. Nothing else should run on the machine meanwhile.

Usage: python bench/sweep_throughput.py [--preset minigrid-quick] [--runs 8]
       [--total-steps 100000] [--method dense]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mtrl_sparse.host_memory import reuse_freed_memory
from mtrl_sparse.train_args import COMPILE_CACHE_ENV, usable_cores


def sweep_seconds(args: argparse.Namespace, group_size: int, workers: int, cache: Path,
                  out: Path) -> float:
    command = [sys.executable, "-m", "mtrl_sparse.cli", "sweep", "--preset", args.preset,
               "--method", args.method, "--seeds", str(args.runs), "--out", str(out),
               "--group-size", str(group_size), "--workers", str(workers),
               "--total-steps", str(args.total_steps)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True,
                   env={**os.environ, COMPILE_CACHE_ENV: str(cache)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="minigrid-quick")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--total-steps", type=int, default=100_000)
    parser.add_argument("--method", default="dense")
    args = parser.parse_args()
    cores = usable_cores()
    configs = {"sequential": (1, 1), "vmapped": (args.runs, 1),
               "pinned groups": (max(1, args.runs // cores), cores),
               "pinned runs": (1, cores)}
    print(f"{args.runs} runs of {args.preset} ({args.method}, {args.total_steps:,} env steps "
          f"each), {cores} CPU cores; warm compilation cache")
    print(f"{'execution':14} {'group size':>10} {'workers':>7} {'seconds':>8} {'speed-up':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        cache, seconds = Path(tmp) / "cache", {}
        for name, (group_size, workers) in configs.items():
            for attempt in ("fill", "timed"):
                out = Path(tmp) / f"{name.replace(' ', '-')}-{attempt}"
                seconds[name] = sweep_seconds(args, group_size, workers, cache, out)
            print(f"{name:14} {group_size:>10} {workers:>7} {seconds[name]:8.1f} "
                  f"{seconds['sequential'] / seconds[name]:7.2f}x", flush=True)


if __name__ == "__main__":
    reuse_freed_memory()  # as the CLI does: time what a run gets
    main()
