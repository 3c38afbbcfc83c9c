#!/usr/bin/env bash
# A sweep on a running Ray cluster (ray start --head ... on one node, ray start --address ... on
# the others): each vmapped group is a Ray task asking for GPUS_PER_GROUP GPUs (0: CPU cores).
# OUT_DIR must be on a file system every node sees. Rerun the same command to resume.
#   RAY_ADDRESS=auto GPUS_PER_GROUP=1 scripts/sweep_ray_cluster.sh SWEEP.toml OUT_DIR [options]
set -euo pipefail
file=${1:?usage: $0 SWEEP.toml OUT_DIR [sweep options]}
out=${2:?usage: $0 SWEEP.toml OUT_DIR [sweep options]}
shift 2
exec mtrl-sparse sweep --file "$file" --out "$out" --backend ray \
  --address "${RAY_ADDRESS:-auto}" --gpus "${GPUS_PER_GROUP:-1}" "$@"
