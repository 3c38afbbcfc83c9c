"""What each sparsity or plasticity method adds to the paper-config SAC update.

For every registered method (sparse ones at ``--sparsity``, default 0.95) on the paper's MT10
multi-task SAC update (batch 1280, 3x400, twin critics, 10 tasks) with the paper's intervals,
measured in one process against the dense update:

- ``update``: median time of an update at a step where no event fires, over dense's;
- ``event ms``: the extra time of an update at which the method's event fires (pruning, drop and
  regrow, reset, recycling), over the method's own plain update;
- ``amortised``: the update time with one event per interval averaged in, over dense's
  (target <= 1.05);
- and once, the cost of one plasticity-metrics pass (dormant neurons, srank, Fisher trace, norms)
  on 1,024 recent transitions.

Events are placed by setting the update counter: the step 200,000 is an event of every method at
the paper's settings (inside GMP's pruning window of a 2M-update run and RigL's drop window, a
multiple of every interval, Reset's second and last reset); 200,001 is an event of none.

Usage: python bench/method_overhead.py [--rounds 5] [--calls 5] [--methods dense gmp ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp

from mtrl_sparse.agents.replay_buffer import Transition
from mtrl_sparse.agents.sac import SACConfig, make_sac
from mtrl_sparse.config import PlasticityConfig
from mtrl_sparse.host_memory import reuse_freed_memory
from mtrl_sparse.methods.base import INTERVAL_SUFFIX, NetworkMethodSettings
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.methods.registry import METHODS
from mtrl_sparse.probe import make_sac_probe

NUM_TASKS, OBS_DIM, ACTION_DIM = 10, 39, 4
TOTAL_UPDATES = 2_000_000  # 20M env steps, 10 envs, one update per vector step
EVENT_STEP = 200_000
PLAIN_STEP = 200_001

def event_interval(name: str) -> int | None:
    """Updates between two events of a method (the largest over a composition), or None."""
    intervals = []
    for part in name.split("+"):
        options = METHODS[part].options
        if options is None:
            continue
        defaults = options()
        intervals += [getattr(defaults, f.name) for f in dataclasses.fields(defaults)
                      if f.name.endswith(INTERVAL_SUFFIX)]
    return max(intervals) if intervals else None


def paper_batch(key: jax.Array, batch_size: int) -> tuple[Transition, jax.Array]:
    k = jax.random.split(key, 4)
    batch = Transition(
        obs=jax.random.normal(k[0], (batch_size, OBS_DIM)),
        actions=jax.random.uniform(k[1], (batch_size, ACTION_DIM), minval=-1, maxval=1),
        rewards=jax.random.uniform(k[2], (batch_size,), maxval=10),
        next_obs=jax.random.normal(k[3], (batch_size, OBS_DIM)),
        terminated=jnp.zeros(batch_size),
    )
    return batch, jnp.repeat(jnp.arange(NUM_TASKS), batch_size // NUM_TASKS)


class MethodBench:
    """A method's jitted update, a state and a batch, timed at a plain step and an event step."""

    def __init__(self, name: str, sparsity: float, config: SACConfig):
        sparse = any(METHODS[p].kind == "sparsity" for p in name.split("+"))
        settings = NetworkMethodSettings(name, sparsity if sparse else 0.0, "erk", TOTAL_UPDATES)
        setup = build_network(settings)
        self.sac = make_sac(config, NUM_TASKS, OBS_DIM, ACTION_DIM, setup, setup)
        self.state = jax.jit(self.sac.init)(jax.random.PRNGKey(0))
        self.batch, self.tasks = paper_batch(jax.random.PRNGKey(1), config.batch_size)
        self.update = jax.jit(self.sac.update)
        for step in (PLAIN_STEP, EVENT_STEP):  # compile and warm up both branches
            jax.block_until_ready(self.call(step))
        # Time from the state after one update: a method whose events follow its own state
        # (APP prunes once when a megabatch begins) is then past its event, as in a run.
        self.state = jax.block_until_ready(self.call(PLAIN_STEP))[0]

    def call(self, step: int):
        state = self.state.replace(step=jnp.asarray(step - 1, jnp.int32))
        return self.update(state, self.batch, self.tasks, jax.random.PRNGKey(2))

    def seconds(self, step: int, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            out = self.call(step)
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=[*METHODS, "gmp+redo"])
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1280)
    args = parser.parse_args()
    methods = [m for m in args.methods if all(p in METHODS for p in m.split("+"))]
    config = SACConfig(batch_size=args.batch_size)

    benches = {"dense": MethodBench("dense", 0.0, config)}
    for name in methods:
        benches.setdefault(name, MethodBench(name, args.sparsity, config))
    plain = {name: [] for name in benches}
    event = {name: [] for name in benches}
    for _ in range(args.rounds):  # interleaved, so that load hits every method alike
        for name, bench in benches.items():
            plain[name].append(bench.seconds(PLAIN_STEP, args.calls))
            event[name].append(bench.seconds(EVENT_STEP, args.calls))

    print(f"Method overhead on the paper-config SAC update (batch {args.batch_size}, 3x400, "
          f"twin critics, {NUM_TASKS} tasks), sparsity {args.sparsity}, jax "
          f"{jax.__version__} on {jax.devices()[0].platform}")
    print(f"  medians of {args.rounds} interleaved rounds x {args.calls} calls")
    dense_s = statistics.median(plain["dense"])
    print(f"{'method':<22}{'update ms':>10}{'/ dense':>9}{'event ms':>10}{'interval':>10}"
          f"{'amortised':>11}  target <= 1.05")
    for name in benches:
        plain_s = statistics.median(plain[name])
        event_extra = max(statistics.median(event[name]) - plain_s, 0.0)
        interval = event_interval(name)
        amortised = plain_s + (event_extra / interval if interval else 0.0)
        verdict = "PASS" if amortised / dense_s <= 1.05 else "FAIL"
        print(f"{name:<22}{plain_s * 1e3:>10.1f}{plain_s / dense_s:>9.3f}"
              f"{(event_extra * 1e3 if interval else 0.0):>10.1f}{interval or '-':>10}"
              f"{amortised / dense_s:>11.3f}  {verdict}")

    plasticity = PlasticityConfig()
    bench = benches["dense"]
    probe = jax.jit(make_sac_probe(bench.sac, plasticity.dormant_tau, plasticity.srank_delta))
    batch, tasks = paper_batch(jax.random.PRNGKey(3), plasticity.batch_size // 10 * 10)
    jax.block_until_ready(probe(bench.state, batch, tasks, jax.random.PRNGKey(4)))
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        jax.block_until_ready(probe(bench.state, batch, tasks, jax.random.PRNGKey(4)))
        times.append(time.perf_counter() - start)
    probe_s = statistics.median(times)
    print(f"plasticity metrics pass on {batch.obs.shape[0]} transitions: {probe_s * 1e3:.0f} ms "
          f"= {probe_s / dense_s:.1f} dense updates; every {plasticity.every_updates} updates "
          f"it adds {probe_s / dense_s / plasticity.every_updates:.2e} of the update time")


if __name__ == "__main__":
    reuse_freed_memory()  # as the CLI does: time what a run gets
    main()
