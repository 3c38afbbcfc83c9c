"""End-to-end speed of the SAC training loop on Meta-World MT10, and where its wall time goes.

Runs a real training job through ``mtrl_sparse.train`` (default: the ``mt10-quick`` networks and
batch, shortened to 20,000 env steps with 10,000 of warm-up, one evaluation and one checkpoint)
and prints:

- env-steps/s in the warm-up phase (random actions, no updates) and in the update phase (one
  update per vector step), from the run's own metrics rows;
- the share of wall time spent in env stepping, the agent (acting and updating: ``act`` blocks
  until the previous update finished, so update time lands here), compilation (the first call of
  each jitted step), evaluation, logging and checkpointing, as measured by the runner.

The ratio update-phase / warm-up-phase speed tells how much the updates slow the loop down;
``--preset mt10-paper`` measures the paper's networks and batch instead (slow on a CPU).

Usage: python bench/train_loop.py [--preset mt10-quick] [--total-steps N] [--warmup-steps N]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

from mtrl_sparse.presets import PRESETS
from mtrl_sparse.run_dir import read_metrics
from mtrl_sparse.run_loop import train

PARTS = ("env", "agent", "compile", "eval", "logging", "checkpoint")


def phase_speed(rows: list[dict], in_warmup: bool) -> float:
    """Env steps per second over the logging intervals of one phase (time-weighted)."""
    steps = seconds = 0.0
    previous = 0
    for row in rows:
        if "updates" not in row:
            continue
        interval = row["step"] - previous
        previous = row["step"]
        if (row["updates"] == 0) == in_warmup:
            steps += interval
            seconds += interval / row["time/env_steps_per_s"]
    return steps / seconds if seconds else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mt10-quick", choices=sorted(PRESETS))
    parser.add_argument("--total-steps", type=int, default=20_000)
    parser.add_argument("--warmup-steps", type=int, default=10_000)
    parser.add_argument("--vector-strategy", default="sync", choices=("sync", "async"))
    args = parser.parse_args()

    base = PRESETS[args.preset].config
    with tempfile.TemporaryDirectory() as tmp:
        config = dataclasses.replace(
            base,
            total_env_steps=args.total_steps,
            warmup_env_steps=args.warmup_steps,
            log_every_env_steps=1_000,
            eval_every_env_steps=args.total_steps,
            checkpoint_every_env_steps=args.total_steps,
            env=dataclasses.replace(base.env, vector_strategy=args.vector_strategy),
            run_dir=str(Path(tmp) / "run"),
            progress=False,
        )
        result = train(config)
        rows = read_metrics(result.run_dir)

    warm, learn = phase_speed(rows, True), phase_speed(rows, False)
    num_envs = config.env.envs_per_task * len(result.task_names)
    print(f"SAC training loop, preset {args.preset} ({config.env.benchmark}, "
          f"{config.env.vector_strategy} envs), hidden {config.sac.hidden_sizes}, "
          f"batch {config.sac.batch_size}")
    print(f"  {result.env_steps} env steps ({args.warmup_steps} warm-up), "
          f"{result.updates} updates, {result.seconds['total']:.1f} s in the loop")
    print(f"  warm-up phase:  {warm:8.0f} env-steps/s")
    print(f"  update phase:   {learn:8.0f} env-steps/s  "
          f"({learn / num_envs * config.updates_per_vector_step:.1f} updates/s)")
    print(f"  update phase / warm-up phase speed: {learn / warm:.3f}")
    total = result.seconds["total"]
    print("  share of wall time:")
    for part in PARTS:
        print(f"    {part:<11} {result.seconds[part] / total:6.1%}  ({result.seconds[part]:.1f} s)")
    other = total - sum(result.seconds[p] for p in PARTS)
    print(f"    {'other':<11} {other / total:6.1%}  ({other:.1f} s, host bookkeeping)")


if __name__ == "__main__":
    main()
