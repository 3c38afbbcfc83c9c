"""End-to-end speed of the SAC training loop on Meta-World MT10, and where its wall time goes.

Runs a real training job through ``mtrl_sparse.train`` (default: the ``mt10-quick`` networks and
batch, shortened to 20,000 env steps with 10,000 of warm-up, one evaluation of one episode per
task and one checkpoint)
and prints:

- env-steps/s in the warm-up phase (random actions, no updates) and in the update phase (one
  update per vector step), from the run's own metrics rows, without compilation and evaluation
  (each phase's first logging interval, which holds its compilation, is left out, and evaluation
  time is subtracted from the interval it ran in);
- the share of wall time spent in env stepping, the agent (acting and updating: ``act`` blocks
  until the previous update finished, so update time lands here), compilation (the first call of
  each jitted step), evaluation, logging and checkpointing, as measured by the run loop.

The ratio update-phase / warm-up-phase speed tells how much the updates slow the loop down;
``--preset mt10-paper`` measures the paper's networks and batch instead (slow on a CPU).

With ``--compute dense sparse`` (and ``--method``, ``--sparsity``), the same run once per way of
computing the masked layers, and the ratio of their update-phase speeds (the sparse kernels'
end-to-end gain; ``bench/sparse_compute.py`` times the update alone).

Usage: python bench/train_loop.py [--preset mt10-quick] [--total-steps N] [--warmup-steps N]
       [--method static --sparsity 0.95 --compute dense sparse]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mtrl_sparse.host_memory import reuse_freed_memory
from mtrl_sparse.presets import PRESETS
from mtrl_sparse.run_dir import read_metrics
from mtrl_sparse.run_loop import train

PARTS = ("env", "agent", "compile", "eval", "logging", "checkpoint")


@dataclass
class Phase:
    """Env steps, updates and seconds of one phase, summed over its logging intervals."""

    env_steps: float = 0.0
    updates: float = 0.0
    seconds: float = 0.0

    def rate(self, amount: float) -> float:
        return amount / self.seconds if self.seconds > 0 else float("nan")


def phase_totals(rows: list[dict], in_warmup: bool) -> Phase:
    """One phase's logging intervals, without compilation and evaluation.

    An interval's time is its env steps over its ``time/env_steps_per_s``, less the evaluations
    run inside it: the run loop evaluates right after writing a metrics row, so an evaluation's
    ``time/eval_s`` lands in the next interval (the final one, after the last row, in none). The
    first interval of each phase is left out: it holds the compilation of the phase's jitted
    steps (and, for the update phase, may hold warm-up steps).
    """
    phase = Phase()
    previous_step = previous_updates = 0
    eval_seconds = 0.0
    seen_first = False
    for row in rows:
        if "time/eval_s" in row:
            eval_seconds += row["time/eval_s"]
            continue
        if "updates" not in row:
            continue
        steps, updates = row["step"] - previous_step, row["updates"] - previous_updates
        seconds = steps / row["time/env_steps_per_s"] - eval_seconds
        previous_step, previous_updates, eval_seconds = row["step"], row["updates"], 0.0
        if (row["updates"] == 0) != in_warmup:
            continue
        if not seen_first:
            seen_first = True
            continue
        phase.env_steps += steps
        phase.updates += updates
        phase.seconds += seconds
    return phase


def run_loop(base, args, compute: str):
    """Train ``base`` shortened as ``args`` say, with masked layers computing as ``compute``;
    returns (config, result, warm-up phase, update phase)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = dataclasses.replace(
            base,
            total_env_steps=args.total_steps,
            warmup_env_steps=args.warmup_steps,
            log_every_env_steps=1_000,
            eval_every_env_steps=args.total_steps,
            checkpoint_every_env_steps=args.total_steps,
            env=dataclasses.replace(base.env, vector_strategy=args.vector_strategy,
                                    eval_envs_per_task=1, eval_episodes_per_task=1),
            run_dir=str(Path(tmp) / "run"),
            progress=False,
            method=args.method or base.method,
            sparsity=base.sparsity if args.sparsity is None else args.sparsity,
            compute=compute,
        )
        result = train(config)
        rows = read_metrics(result.run_dir)
    return config, result, phase_totals(rows, True), phase_totals(rows, False)


def report(config, result, args, warm_phase: Phase, learn_phase: Phase) -> float:
    """Prints one run's phases and shares of wall time; returns its update-phase env-steps/s."""
    warm = warm_phase.rate(warm_phase.env_steps)
    learn = learn_phase.rate(learn_phase.env_steps)
    print(f"SAC training loop, preset {args.preset} ({config.env.benchmark}, "
          f"{config.env.vector_strategy} envs), hidden {config.sac.hidden_sizes}, "
          f"batch {config.sac.batch_size}, method {config.method} at sparsity "
          f"{config.sparsity}, compute {config.compute}")
    print(f"  {result.env_steps} env steps ({args.warmup_steps} warm-up), "
          f"{result.updates} updates, {result.seconds['total']:.1f} s in the loop")
    print("  phases (logging intervals; each phase's first interval, with its compilation, and "
          "evaluation time left out):")
    print(f"  warm-up phase:  {warm:8.0f} env-steps/s  over {warm_phase.env_steps:.0f} env steps")
    print(f"  update phase:   {learn:8.0f} env-steps/s  "
          f"({learn_phase.rate(learn_phase.updates):.2f} updates/s) over "
          f"{learn_phase.env_steps:.0f} env steps")
    if learn_phase.seconds <= 0:
        print("    (no update-phase interval after its first: raise --total-steps)")
    print(f"  update phase / warm-up phase speed: {learn / warm:.3f}")
    total = result.seconds["total"]
    print("  share of wall time:")
    for part in PARTS:
        print(f"    {part:<11} {result.seconds[part] / total:6.1%}  ({result.seconds[part]:.1f} s)")
    other = total - sum(result.seconds[p] for p in PARTS)
    print(f"    {'other':<11} {other / total:6.1%}  ({other:.1f} s, host bookkeeping)")
    return learn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mt10-quick", choices=sorted(PRESETS))
    parser.add_argument("--total-steps", type=int, default=20_000)
    parser.add_argument("--warmup-steps", type=int, default=10_000)
    parser.add_argument("--vector-strategy", default="sync", choices=("sync", "async"))
    parser.add_argument("--method", default=None, help="default: the preset's")
    parser.add_argument("--sparsity", type=float, default=None, help="default: the preset's")
    parser.add_argument("--compute", nargs="+", default=["dense"],
                        choices=("dense", "sparse", "auto"),
                        help="one run per value, in this order; with more than one, the "
                             "update-phase speed of each over the first's")
    args = parser.parse_args()

    base = PRESETS[args.preset].config
    speeds = {}
    for compute in args.compute:
        config, result, warm_phase, learn_phase = run_loop(base, args, compute)
        speeds[compute] = report(config, result, args, warm_phase, learn_phase)
    first = args.compute[0]
    for compute, speed in speeds.items():
        if compute != first:
            print(f"update-phase env-steps/s, compute {compute} / {first}: "
                  f"{speed / speeds[first]:.2f}x")


if __name__ == "__main__":
    reuse_freed_memory()  # as the CLI does: time what a run gets
    main()
