#!/usr/bin/env bash
# The reference paper's MiniGrid check: dense multi-task PPO against GMP at 95% sparsity, several
# seeds each, one run after another; then `mtrl-sparse report` aggregates them (IQM of the final
# normalised return with a 95% stratified-bootstrap interval). Run copies with different SEEDS
# to spread the work over machines.
#
#   SEEDS="0 1 2 3 4" PRESET=minigrid-mt3 scripts/minigrid_gmp_study.sh [extra train flags]
set -euo pipefail

SEEDS=${SEEDS:-"0 1 2 3 4 5 6 7 8 9"}
PRESET=${PRESET:-minigrid-mt3}
OUT=${OUT:-runs/$PRESET-study}

run() {  # run NAME FLAGS...: train into $OUT/NAME unless it already holds a finished run
  local dir="$OUT/$1"; shift
  if [ -n "$(ls -A "$dir/checkpoints" 2>/dev/null)" ]; then
    echo "done already: $dir" >&2
  elif [ -e "$dir" ]; then
    echo "skipping $dir: used but holds no checkpoint (remove it to start again)" >&2
  else
    mtrl-sparse train --preset "$PRESET" --run-dir "$dir" "$@"
  fi
}

for seed in $SEEDS; do
  run "dense-s$seed" --method dense --seed "$seed" "$@"
  run "gmp-0.95-s$seed" --method gmp --sparsity 0.95 --seed "$seed" "$@"
done
