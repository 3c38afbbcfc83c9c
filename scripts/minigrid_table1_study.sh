#!/usr/bin/env bash
# The whole MiniGrid Table 1 study of the reference paper, resumable: MT3, then MoE and MOORE
# on MT3, then MT5 and MT7, each a sweep under OUT (default sweeps/), then one report per sweep.
# Rerun the same command after an interruption: finished runs are skipped, started ones resume.
#   scripts/minigrid_table1_study.sh [OUT] [sweep options, e.g. --workers 2]
set -euo pipefail
out=${1:-sweeps}
shift || true
here=$(dirname "$0")
for grid in minigrid_table1:mt3-table1 minigrid_mt3_moe:mt3-moe minigrid_mt3_moore:mt3-moore \
            minigrid_table1_mt5:mt5-table1 minigrid_table1_mt7:mt7-table1; do
  mtrl-sparse sweep --file "$here/${grid%%:*}.toml" --out "$out/${grid##*:}" "$@"
done
for sweep in mt3-table1 mt3-moe mt3-moore mt5-table1 mt7-table1; do
  mtrl-sparse report "$out/$sweep" --reps 5000
done
