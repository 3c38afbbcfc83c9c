"""K MiniGrid PPO runs vmapped in one program against the same K runs one after another,
measured in one process.

Both run the preset on the JAX backend with compiled rollouts and updates (one call per
rollout): sequential is one run's rollout-and-update call, K times; vmapped is one call of the
K-run program (seeds 0..K-1; ``--sparsities`` cycles target sparsities over the runs, GMP). Each
is compiled and warmed first; the two are timed alternately, ``--repeats`` rounds, and the ratio
sequential / vmapped (per rollout of all K runs) is the median of the rounds' ratios (target:
K = 8 at least 1.5x on 2 cores).

On a CPU the runs are split over one XLA CPU device per core, as ``mtrl-sparse train`` splits a
vmapped group (``--one-device`` to measure one device).

Usage: python bench/vmapped_runs.py [--preset minigrid-mt3] [--ks 1 2 4 8] [--repeats 5]
       [--cnn pooled|unpooled] [--sparsities 0.8 0.95] [--one-device]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

# As `mtrl-sparse train` does for vmapped runs: one XLA CPU device per core, over which a group's
# run axis is sharded (set before JAX starts its backend); --one-device measures without.
if "--one-device" not in sys.argv:
    os.environ.setdefault("XLA_FLAGS",
                          f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import jax  # noqa: E402

from mtrl_sparse.agent_kind import EpisodeTracker  # noqa: E402
from mtrl_sparse.host_memory import reuse_freed_memory
from mtrl_sparse.on_policy import OnPolicyRun  # noqa: E402
from mtrl_sparse.on_policy_group import VmappedOnPolicyRuns  # noqa: E402
from mtrl_sparse.presets import get_preset  # noqa: E402


def median_seconds(step, repeats: int) -> float:
    step()  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="minigrid-mt3")
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cnn", choices=["pooled", "unpooled"], default="pooled")
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.8, 0.95])
    parser.add_argument("--one-device", action="store_true",
                        help="one XLA CPU device for all runs (default: one per core)")
    args = parser.parse_args()
    base = get_preset(args.preset).config
    base = dataclasses.replace(
        base, method="gmp", env=dataclasses.replace(base.env, backend="jax"),
        ppo=dataclasses.replace(base.ppo, cnn_pooling=args.cnn == "pooled"))

    def config(k: int):
        return dataclasses.replace(base, seed=k,
                                   sparsity=args.sparsities[k % len(args.sparsities)])

    single = OnPolicyRun(config(0))
    single.start()
    tracker = EpisodeTracker(single.task_names, single.num_envs)
    single.iterate(tracker)  # compile
    print(f"{args.preset} ({args.cnn} CNN, GMP), {os.cpu_count()} CPU cores, "
          f"{len(jax.devices())} {jax.devices()[0].platform} devices (the run axis split over "
          "them when they divide K); per round, one run's rollout + update timed right before "
          "the K-run program's")
    print(f"{'K':>3} {'one run s':>9} {'sequential s':>12} {'vmapped s':>10} {'speed-up':>9}")
    for k in args.ks:
        group = VmappedOnPolicyRuns([config(i) for i in range(k)])
        group.start()
        trackers = [EpisodeTracker(group.task_names, group.num_envs) for _ in range(k)]
        group.iterate(trackers)  # compile
        ones, groups = [], []
        for _ in range(args.repeats):  # interleaved: both see the machine's speed of the moment
            ones.append(median_seconds(lambda: single.iterate(tracker), 3))
            groups.append(median_seconds(lambda g=group, t=trackers: g.iterate(t), 1))
        group.close()
        one, vmapped = statistics.median(ones), statistics.median(groups)
        ratio = statistics.median(k * o / g for o, g in zip(ones, groups, strict=True))
        print(f"{k:3d} {one:9.3f} {k * one:12.3f} {vmapped:10.3f} {ratio:8.2f}x", flush=True)
    single.close()


if __name__ == "__main__":
    reuse_freed_memory()  # as the CLI does: time what a run gets
    main()
