"""Test-wide setup: the CPU backend, compilation settings, and the Hypothesis profiles.

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

import functools
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# XLA's CPU fusion emitters take about 40% of the compile time of the tests' small programs. The
# flag is XLA-internal (an unknown flag aborts the process), so it is set only on the jaxlib
# versions it was measured on; elsewhere the tests compile with XLA's default emitters.
FAST_COMPILE_JAXLIB = (0, 10)
FAST_COMPILE_FLAG = "--xla_cpu_use_fusion_emitters=false"


def jaxlib_version() -> tuple[int, ...]:
    """The installed jaxlib's (major, minor) version numbers, read without importing jax."""
    return tuple(int(part) for part in version("jaxlib").split(".")[:2])


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


# Tests run on the CPU; determinism is a CPU guarantee.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite is bound by XLA compilation (hundreds of small programs, each run a few times), and
# XLA's backend optimisations cost more compile time than they save at run time here: with them
# off the suite takes about 30% less time. Set in the environment before jax is imported, so
# that the runs the tests start in subprocesses compile the same way as the tests themselves.
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 turns them back on.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Programs that take 0.3 s or more to compile are kept on disk (XLA's key is the program, the
# flags and the versions, so an entry is never stale): the worker processes, the runs the tests
# start in subprocesses and every later run of the suite reuse them. A fresh clone starts empty.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(__file__).resolve().parent.parent / ".cache" / "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(1 << 30))  # bytes, oldest evicted
xla_flags = os.environ.get("XLA_FLAGS", "")
if jaxlib_version() == FAST_COMPILE_JAXLIB and "fusion_emitters" not in xla_flags:
    os.environ["XLA_FLAGS"] = f"{xla_flags} {FAST_COMPILE_FLAG}".strip()

settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _in_ci() else "dev"))


# Every parametrised case must check something about its own subject: a case whose body loops
# over nothing (e.g. the networks of a run that does not run the case's method) passes without
# asserting anything. Checks are counted per test process: plain ``assert`` statements that pass
# (pytest's assertion-pass hook, ``enable_assertion_pass_hook`` in pyproject.toml; the helpers in
# ``support`` are rewritten too), calls of ``numpy.testing``'s assertions and of ``pytest.raises``
# / ``pytest.warns`` (a context that fails when nothing is raised). A parametrised case that
# passes with none fails, naming itself.
pytest.register_assert_rewrite("support")
pytest_plugins = ["pytester"]  # tests/test_vacuous_cases.py runs the guard in a fresh session
CHECKS_MADE = [0]
"""Checks made in this process so far (one cell, so the hooks and wrappers below share it)."""


def _counting(check):
    @functools.wraps(check)
    def counted(*args, **kwargs):
        CHECKS_MADE[0] += 1
        return check(*args, **kwargs)
    return counted


for _name in [n for n in dir(np.testing) if n.startswith("assert_")]:
    setattr(np.testing, _name, _counting(getattr(np.testing, _name)))
pytest.raises, pytest.warns = _counting(pytest.raises), _counting(pytest.warns)


def pytest_assertion_pass(item, lineno, orig, expl):
    del item, lineno, orig, expl
    CHECKS_MADE[0] += 1


_CHECKS_IN_CALL = pytest.StashKey[int]()
"""Checks made by a test's call phase (its body), stashed on the test item."""


def pytest_runtest_setup(item):
    """``cpu_numbers`` tests (pyproject.toml's markers) run on the CPU backend only."""
    if item.get_closest_marker("cpu_numbers") is not None:
        import jax

        if jax.default_backend() != "cpu":
            pytest.skip(f"assumes the CPU's exact numbers; JAX runs on {jax.default_backend()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    before = CHECKS_MADE[0]
    yield
    item.stash[_CHECKS_IN_CALL] = CHECKS_MADE[0] - before


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    parametrised = hasattr(item, "callspec")
    if (call.when == "call" and report.passed and parametrised
            and item.stash.get(_CHECKS_IN_CALL, 1) == 0):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: this parametrised case passed without checking "
                           "anything (no assert, numpy.testing assertion or pytest.raises ran); "
                           "make it check its subject or skip it with a reason")
