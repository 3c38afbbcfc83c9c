#!/usr/bin/env bash
# A sweep on every GPU of one node: one worker process per GPU, each running a vmapped group at
# a time (CUDA_VISIBLE_DEVICES narrows the GPUs). Rerun the same command to resume.
#   scripts/sweep_multi_gpu.sh scripts/mt10_paper.toml sweeps/mt10-paper [sweep options]
set -euo pipefail
file=${1:?usage: $0 SWEEP.toml OUT_DIR [sweep options]}
out=${2:?usage: $0 SWEEP.toml OUT_DIR [sweep options]}
shift 2
exec mtrl-sparse sweep --file "$file" --out "$out" "$@"  # all visible GPUs by default
