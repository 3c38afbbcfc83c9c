#!/usr/bin/env bash
# A sweep on one GPU: every group of runs, one after another, on GPU 0 (or the GPU in
# CUDA_VISIBLE_DEVICES). Rerun the same command to resume.
#   scripts/sweep_one_gpu.sh scripts/minigrid_table1.toml sweeps/minigrid-mt3 [sweep options]
set -euo pipefail
file=${1:?usage: $0 SWEEP.toml OUT_DIR [sweep options]}
out=${2:?usage: $0 SWEEP.toml OUT_DIR [sweep options]}
shift 2
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
exec mtrl-sparse sweep --file "$file" --out "$out" --gpus 1 "$@"
