#!/usr/bin/env bash
# The reference paper's MT10 comparison as a plain loop over the CLI: dense against static sparse
# networks at the paper's sparsity levels, several seeds each, one run after another; run copies
# of this script with different SEEDS (on several machines or GPUs) to spread the work.
#
#   SEEDS="0 1 2" SPARSITIES="0.8 0.95 0.99" scripts/mt10_paper_sweep.sh [extra train flags]
set -euo pipefail

SEEDS=${SEEDS:-"0 1 2 3 4 5 6 7 8 9"}
SPARSITIES=${SPARSITIES:-"0.8 0.95 0.99"}
PRESET=${PRESET:-mt10-paper}
OUT=${OUT:-runs/$PRESET}

run() {  # run NAME FLAGS...: train into $OUT/NAME, or resume it if it was interrupted
  local dir="$OUT/$1"; shift
  if [ -f "$dir/config.json" ]; then
    mtrl-sparse train --resume --run-dir "$dir"
  else
    mtrl-sparse train --preset "$PRESET" --run-dir "$dir" "$@"
  fi
}

for seed in $SEEDS; do
  run "dense-s$seed" --method dense --seed "$seed" "$@"
  for sparsity in $SPARSITIES; do
    run "static-$sparsity-s$seed" --method static --sparsity "$sparsity" --seed "$seed" "$@"
  done
done
