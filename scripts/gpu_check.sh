#!/usr/bin/env bash
# The GPU check, from a bare node: the offline install (when a wheelhouse is given), then every
# step of scripts/gpu_check.py (device, Quick start, SAC update rate and matmul precision,
# determinism, vmapped MiniGrid runs, a sweep, the inner test loop), each stopped at its time
# bound, all within about 8 minutes; the figures go to OUT/summary.json and OUT/summary.md.
#
#   scripts/gpu_check.sh [--wheelhouse DIR] [--out DIR] [--dry-run] [--budget SECONDS]
#
# --wheelhouse DIR: install the project first, offline, from DIR (made by scripts/wheelhouse.py),
#                   with the node's own jax and build tools (at most 60 s)
# --out DIR:        where the summary, logs and runs go (default gpu-check; must be new or empty)
# --dry-run:        tiny sizes on the CPU, as the test suite runs it
# --budget SECONDS: for the install and every step together (default 470: 8 minutes less a margin)
# PYTHON:           the interpreter to use (default: python3 on PATH)
# Exit status: 0 every step ok, 1 some step failed or ran out of time (see the summary), 2 usage.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
wheelhouse="" out="gpu-check" dry="" budget=470
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) wheelhouse=${2:?--wheelhouse needs a folder}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --dry-run) dry="--dry-run"; shift ;;
    --budget) budget=${2:?--budget needs seconds}; shift 2 ;;
    *) echo "gpu_check.sh: unknown option $1; accepted: --wheelhouse DIR, --out DIR, --dry-run, --budget SECONDS" >&2
       exit 2 ;;
  esac
done
if ! [[ "$budget" =~ ^[0-9]+$ ]] || [ "$budget" -le 60 ]; then
  echo "gpu_check.sh: --budget $budget must be a whole number of seconds above 60" >&2
  exit 2
fi
if [ -n "$wheelhouse" ] && [ ! -d "$wheelhouse" ]; then
  echo "gpu_check.sh: --wheelhouse $wheelhouse is not a folder; make one with scripts/wheelhouse.py" >&2
  exit 2
fi
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  echo "gpu_check.sh: --out $out holds an earlier check; name a new folder" >&2
  exit 2
fi
mkdir -p "$out/logs"
start=$SECONDS
if [ -n "$wheelhouse" ]; then
  timeout -k 5 60 "$python" -m pip install --no-index --find-links "$wheelhouse" \
    --no-build-isolation -e '.[test-core]' > "$out/logs/install.log" 2>&1
  status=$?
  case $status in 0) result=ok ;; 124|137) result=timeout ;; *) result=failed ;; esac
  printf '{"status": "%s", "seconds": %d, "wheelhouse": "%s"}\n' \
    "$result" $((SECONDS - start)) "$wheelhouse" > "$out/install.json"
  echo "gpu check: offline install: $result ($((SECONDS - start)) s)"
  if [ "$result" != ok ]; then tail -5 "$out/logs/install.log" >&2; fi
fi
exec "$python" scripts/gpu_check.py --out "$out" $dry --budget $((budget - (SECONDS - start))) \
  --install-json "$out/install.json"
