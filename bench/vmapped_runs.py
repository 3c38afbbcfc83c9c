"""K MiniGrid PPO runs vmapped in one program against the same K runs one after another,
measured in one process.

Both run the preset on the JAX backend with compiled rollouts and updates (one call per
rollout): sequential is one run's rollout-and-update call, K times; vmapped is one call of the
K-run program (seeds 0..K-1; ``--sparsities`` cycles target sparsities over the runs, GMP). Each
is compiled and warmed first; the figure is the median over ``--repeats`` rollouts, and the
ratio sequential / vmapped is per rollout of all K runs (target: K = 8 at least 1.5x on 2 cores).

Usage: python bench/vmapped_runs.py [--preset minigrid-mt3] [--ks 1 2 4 8] [--repeats 5]
       [--cnn pooled|unpooled] [--sparsities 0.8 0.95]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import jax

from mtrl_sparse.agent_kind import EpisodeTracker
from mtrl_sparse.on_policy import OnPolicyRun
from mtrl_sparse.on_policy_group import VmappedOnPolicyRuns
from mtrl_sparse.presets import get_preset


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
    one = median_seconds(lambda: single.iterate(tracker), args.repeats)
    single.close()
    print(f"{args.preset} ({args.cnn} CNN, GMP), {os.cpu_count()} CPU cores, "
          f"{jax.devices()[0].platform}: one rollout + update {one * 1e3:.0f} ms")
    print(f"{'K':>3} {'sequential s':>12} {'vmapped s':>10} {'speed-up':>9}")
    for k in args.ks:
        group = VmappedOnPolicyRuns([config(i) for i in range(k)])
        group.start()
        trackers = [EpisodeTracker(group.task_names, group.num_envs) for _ in range(k)]
        vmapped = median_seconds(lambda g=group, t=trackers: g.iterate(t), args.repeats)
        group.close()
        print(f"{k:3d} {k * one:12.3f} {vmapped:10.3f} {k * one / vmapped:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
