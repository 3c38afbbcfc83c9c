#!/usr/bin/env bash
# Refresh the lock the README's commands and CI install from (requirements/lock-linux-py311.txt):
# the newest versions within pyproject.toml's bounds of everything the base install and the
# report and test extras need, resolved on Linux x86-64 with Python 3.11. Commit the result on its
# own: its CI run (the whole suite installed from the new lock) is what proves it.
#   scripts/refresh_lock.sh            # every package to its newest version
#   scripts/refresh_lock.sh -P jax     # only jax (and what it needs) moves
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
"$python" -m pip install -q "pip-tools>=7.4"
upgrade=(--upgrade)
if [ "$#" -gt 0 ]; then upgrade=("$@"); fi
"$python" -m piptools compile -q "${upgrade[@]}" --extra test --extra report --strip-extras \
  --no-emit-index-url --no-emit-find-links --output-file requirements/lock-linux-py311.txt \
  pyproject.toml
echo "requirements/lock-linux-py311.txt refreshed; commit it alone and let CI prove it"
