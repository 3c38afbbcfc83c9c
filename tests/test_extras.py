"""The ``test`` extra is every optional part the suite tests, written out (``pyproject.toml``
explains why it does not name the package's own extras): it must hold each of their
requirements, so that no optional part drifts out of the suite's install."""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
TESTED_EXTRAS = ("test-core", "farama", "report", "ray", "docs", "wandb")


def test_the_test_extra_holds_every_tested_extra():
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    test = set(extras["test"])
    assert not any(r.startswith("mtrl-sparse") for r in test), "a self-reference is back"
    for name in TESTED_EXTRAS:
        missing = set(extras[name]) - test
        assert not missing, f"the test extra lacks {name}'s {sorted(missing)}"
