#!/usr/bin/env bash
# IBM's KL weight and gate learning rate chosen together on minigrid-seq (MT7's tasks one after
# another, 50k env steps each): a sweep of 3 seeds per pair under OUT (default sweeps/ibm-gates),
# then one report per pair. Each run logs the trunk share every task freezes
# (actor/ibm/frozen_fraction, critic/ibm/frozen_fraction, per layer under ibm/layers/) beside the
# return; the report gives Continual World's metrics. Resumable: rerun the same command.
#   scripts/ibm_gates_study.sh [OUT] [sweep options, e.g. --workers 2]
# The authors' pair is (1e-3, 1e-3): one Adam at 1e-3 for weights and gates, kl_fac 1e-3.
set -euo pipefail
out=${1:-sweeps/ibm-gates}
shift || true
for pair in 1e-3:1e-3 1e-3:1e-2 1e-2:1e-2; do
  kl=${pair%%:*}
  lr=${pair##*:}
  mtrl-sparse sweep --preset minigrid-seq --method ibm --seeds 3 --no-references --group-size 1 \
    --out "$out/kl$kl-lr$lr" "$@" --methods.ibm.kl-weight "$kl" --methods.ibm.gate-learning-rate "$lr"
done
for pair in 1e-3:1e-3 1e-3:1e-2 1e-2:1e-2; do
  mtrl-sparse report "$out/kl${pair%%:*}-lr${pair##*:}" --reps 5000
done
