"""Test-wide setup: the CPU backend, and the Hypothesis profiles.

``tests/`` is on ``sys.path`` through this file (pytest's default "prepend" import mode), so that
the test modules in ``agents/``, ``methods/``, ``envs/`` and ``runs/`` import their shared helpers
from the ``support`` package.

Hypothesis profiles (the number of examples of every property is the profile's):

* ``ci``: 200 examples per property, derandomized (the same examples on every run), no example
  database; loaded when the environment variable ``CI`` is set (non-empty, not "0" or "false"),
  as ``.ci/run`` does.
* ``dev``: 15 examples per property, random, for a quick local run; loaded otherwise.

``HYPOTHESIS_PROFILE=ci`` (or ``dev``) overrides the choice. Both profiles have no deadline: the
first example of a property compiles its programs.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Tests run on the CPU, single-threaded XLA collectives off; determinism is a CPU guarantee.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=15, deadline=None)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _in_ci() else "dev"))
