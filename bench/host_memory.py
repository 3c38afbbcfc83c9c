"""The host allocator setting (``mtrl_sparse.host_memory``) against glibc's defaults.

Times the paper-config SAC update (MT10, batch 1280, 3 x 400, static ERK masks at 95%) computed
densely and through the sparse kernels, and the un-pooled ``minigrid-mt3`` PPO update (dense),
in child processes that either keep freed memory for reuse (what the CLI does) or run with the
C library's defaults (``MTRL_SPARSE_SYSTEM_MALLOC=1``), the two kinds alternating over
``--rounds`` rounds. Prints per workload the median ms per update, minor page faults and system
CPU time per update of each kind, and the speed-up (default / reused, median of the rounds'
ratios; above 1: reusing memory is faster).

Usage: python bench/host_memory.py [--rounds 3] [--calls 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mtrl_sparse.host_memory import SYSTEM_MALLOC_ENV

WORKLOADS = ("SAC update, dense", "SAC update, sparse kernels at 95%", "PPO update, dense")


def child(calls: int) -> None:
    """Times every workload in this process; prints one JSON line per workload."""
    import resource

    import jax
    from sparse_compute import ppo_workload, sac_workload

    from mtrl_sparse.host_memory import reuse_freed_memory

    reuse_freed_memory()
    makers = (lambda: sac_workload(0.95, None), lambda: sac_workload(0.95, 1.0),
              lambda: ppo_workload(0.95, "dense"))
    for name, make in zip(WORKLOADS, makers, strict=True):
        step, carry = make()
        n = calls if name.startswith("SAC") else max(1, calls // 5)
        for _ in range(2):
            carry = step(carry)
        jax.block_until_ready(carry)
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        for _ in range(n):
            carry = step(carry)
        jax.block_until_ready(carry)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"name": name, "ms": seconds / n * 1e3,
                          "faults": (after.ru_minflt - before.ru_minflt) / n,
                          "sys_ms": (after.ru_stime - before.ru_stime) / n * 1e3}), flush=True)


def measure(system_malloc: bool, calls: int) -> dict[str, dict]:
    env = {**os.environ, SYSTEM_MALLOC_ENV: "1" if system_malloc else "0"}
    out = subprocess.run([sys.executable, __file__, "--child", "--calls", str(calls)],
                         env=env, capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {row["name"]: row for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.calls)
        return
    results: dict[bool, list[dict]] = {False: [], True: []}
    for r in range(args.rounds):
        for system_malloc in (True, False) if r % 2 == 0 else (False, True):
            results[system_malloc].append(measure(system_malloc, args.calls))
    print(f"host allocator: glibc defaults vs freed memory reused; {os.cpu_count()} CPU cores, "
          f"medians of {args.rounds} alternating rounds (one child process each)")
    for name in WORKLOADS:
        def median(system_malloc: bool, key: str, name: str = name) -> float:
            return statistics.median(run[name][key] for run in results[system_malloc])
        ratios = [d[name]["ms"] / t[name]["ms"]
                  for d, t in zip(results[True], results[False], strict=True)]
        print(f"  {name:34s} defaults {median(True, 'ms'):7.1f} ms ({median(True, 'faults'):6.0f}"
              f" faults, {median(True, 'sys_ms'):5.1f} ms sys)  reused {median(False, 'ms'):7.1f}"
              f" ms ({median(False, 'faults'):6.0f} faults, {median(False, 'sys_ms'):5.1f} ms sys)"
              f"  {statistics.median(ratios):5.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
