"""Records the band of the learning-regression gate (tests/runs/test_learning_gate.py).

The gate trains the Quick start preset (``minigrid-quick``) over seeds 0-4 in one vmapped program,
once dense and once with GMP at 95%, and asserts that the IQM of the final normalised return (the
report's IQM: rliable's ``aggregate_iqm`` over the runs x tasks scores) lies in a band. A change
that only reorders float32 sums moves a run like a change of seed moves it (RL training amplifies
a last-bit difference until the run takes another path), so the band is set from the spread that
both give, measured here:

- seed spread: the same preset over ``--seed-sets`` disjoint sets of 5 seeds (0-4, 5-9, ...);
- reorderings: seeds 0-4 under XLA CPU flags that change float32 rounding without changing the
  code: matrix products through XLA's own emitters instead of YNNPACK's fusions
  (``--xla_cpu_experimental_ynn_fusion_type=``), and code generated without FMA
  (``--xla_cpu_max_isa=AVX``).

For each method: the IQM of every 5-seed set, the standard deviation ``sd``, the larger of two
measured spreads (that of the IQM of 5 runs drawn without replacement from all the seed sets'
runs, ``--draws`` draws, and that of seeds 0-4's IQM over the roundings), and the band
``center +- width * sd`` with ``center`` the mean of seeds 0-4's IQMs under the default flags and
every reordering (the gate always trains seeds 0-4, which a reordering does not turn into
arbitrary seeds: their initial networks stay; with the first recording, seeds 0-4 sat below the
20-run IQM under every rounding). Prints the bands as the test's ``BANDS`` literal.

Resumable: a group whose runs all finished is not trained again. Run from a clone that holds the
code being recorded (the runs import the tree they run from):

    python scripts/learning_gate_band.py --out DIR [--seed-sets 4] [--width 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mtrl_sparse.report import final_scores, iqm, score_matrix
from mtrl_sparse.run_dir import FINISHED_FILE

PRESET = "minigrid-quick"
METHODS = {"dense": ("dense", "0"), "gmp": ("gmp", "0.95")}
REORDERINGS = {
    "xla-emitters": "--xla_cpu_experimental_ynn_fusion_type=",
    "no-fma": "--xla_cpu_max_isa=AVX",
}
GROUP = 5


def train_group(run_dir: Path, method: str, seeds: str, xla_flags: str | None) -> None:
    """``mtrl-sparse train --seeds`` of one group, unless every run of it has finished."""
    name, sparsity = METHODS[method]
    first, last = (int(s) for s in seeds.split("-"))
    runs = [run_dir / f"sparsity{sparsity}-seed{s}" for s in range(first, last + 1)]
    if all((run / FINISHED_FILE).is_file() for run in runs):
        return
    env = dict(os.environ)
    if xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    command = [sys.executable, "-m", "mtrl_sparse.cli", "train", "--preset", PRESET,
               "--method", name, "--sparsity", sparsity, "--seeds", seeds,
               "--run-dir", str(run_dir), "--no-progress"]
    resume = ["--auto-resume"] if run_dir.exists() else []
    print(f"training {run_dir}", flush=True)
    subprocess.run(command + resume, check=True, env=env, stdout=subprocess.DEVNULL)


def group_scores(run_dir: Path) -> np.ndarray:
    """(runs, tasks) final normalised returns of a group's runs."""
    runs = sorted(p for p in run_dir.iterdir() if (p / FINISHED_FILE).is_file())
    return score_matrix([final_scores(run)[1] for run in runs], str(run_dir))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed-sets", type=int, default=4)
    parser.add_argument("--width", type=float, default=3.0, help="band half-width in sds")
    parser.add_argument("--draws", type=int, default=20_000)
    args = parser.parse_args()
    summary: dict[str, dict] = {}
    for method in METHODS:
        sets = []
        for k in range(args.seed_sets):
            seeds = f"{k * GROUP}-{k * GROUP + GROUP - 1}"
            run_dir = args.out / method / f"seeds{seeds}"
            train_group(run_dir, method, seeds, None)
            sets.append(group_scores(run_dir))
        reordered = {}
        for name, flags in REORDERINGS.items():
            run_dir = args.out / method / f"seeds0-4-{name}"
            train_group(run_dir, method, "0-4", flags)
            reordered[name] = float(iqm(group_scores(run_dir).ravel()))
        runs = np.concatenate(sets)
        rng = np.random.default_rng(0)
        draws = np.array([iqm(runs[rng.choice(len(runs), GROUP, replace=False)].ravel())
                          for _ in range(args.draws)])
        seeds_0_4 = [float(iqm(sets[0].ravel())), *reordered.values()]
        center = float(np.mean(seeds_0_4))
        seed_sd, rounding_sd = float(draws.std()), float(np.std(seeds_0_4, ddof=1))
        sd = max(seed_sd, rounding_sd)
        band = (round(center - args.width * sd, 3), round(center + args.width * sd, 3))
        summary[method] = {
            "set_iqms": [round(float(iqm(s.ravel())), 4) for s in sets],
            "reordered_seeds0-4": {k: round(v, 4) for k, v in reordered.items()},
            "runs": len(runs), "iqm_of_all_runs": round(float(iqm(runs.ravel())), 4),
            "center_seeds0-4": round(center, 4), "sd_of_5_run_iqm": round(seed_sd, 4),
            "sd_of_seeds0-4_over_roundings": round(rounding_sd, 4),
            "sd": round(sd, 4), "band": band,
        }
    print(json.dumps(summary, indent=2))
    print("BANDS = {" + ", ".join(f'"{m}": {s["band"]}' for m, s in summary.items()) + "}")


if __name__ == "__main__":
    main()
