#!/usr/bin/env bash
# The reference paper's MT10 comparison as a plain loop over the CLI: dense baselines and
# plasticity methods on dense networks, against sparse methods at the paper's sparsity levels,
# several seeds each, one run after another. Run copies of this script with different SEEDS (on
# several machines or GPUs) to spread the work; an interrupted run is resumed where it stopped.
#
#   SEEDS="0 1 2" SPARSITIES="0.8 0.95 0.99" SPARSE_METHODS="gmp rigl" \
#     scripts/mt10_paper_sweep.sh [extra train flags]
set -euo pipefail

SEEDS=${SEEDS:-"0 1 2 3 4 5 6 7 8 9"}
SPARSITIES=${SPARSITIES:-"0.8 0.95 0.99"}
DENSE_METHODS=${DENSE_METHODS:-"dense reset redo weight_decay layernorm"}
SPARSE_METHODS=${SPARSE_METHODS:-"static gmp set rigl"}
PRESET=${PRESET:-mt10-paper}
OUT=${OUT:-runs/$PRESET}

run() {  # run NAME FLAGS...: train into $OUT/NAME, or resume it if it was interrupted
  local dir="$OUT/$1"; shift
  if [ -n "$(ls -A "$dir/checkpoints" 2>/dev/null)" ]; then
    mtrl-sparse train --resume --run-dir "$dir"  # a finished run resumes to its end at once
  elif [ -e "$dir" ]; then
    echo "skipping $dir: used but holds no checkpoint (remove it to start again)" >&2
  else
    mtrl-sparse train --preset "$PRESET" --run-dir "$dir" "$@"
  fi
}

for seed in $SEEDS; do
  for method in $DENSE_METHODS; do
    run "$method-s$seed" --method "$method" --seed "$seed" "$@"
  done
  for method in $SPARSE_METHODS; do
    for sparsity in $SPARSITIES; do
      run "$method-$sparsity-s$seed" --method "$method" --sparsity "$sparsity" --seed "$seed" "$@"
    done
  done
done
