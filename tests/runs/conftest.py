"""Fixtures of the run-level tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtrl_sparse.cli import main
from support.run_checks import MINIGRID_CHECKPOINTED, complete_checkpoints


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> Path:
    """An uninterrupted minigrid-smoke run (``MINIGRID_CHECKPOINTED``): 3 rollouts, a
    checkpoint after each; what an interrupted run must end equal to."""
    run = tmp_path_factory.mktemp("whole") / "run"
    assert main(["train", *MINIGRID_CHECKPOINTED, "--run-dir", str(run)]) == 0
    assert complete_checkpoints(run) == [200, 400, 600]
    return run
