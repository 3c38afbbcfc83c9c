"""Marks for tests that need an optional dependency: they skip without it, naming its extra, so
that the inner loop runs where only the training dependencies and ``test-core`` are installed
(a GPU node's set, docs: Air-gapped clusters)."""

from __future__ import annotations

import importlib.util

import pytest

from mtrl_sparse.envs.minigrid import farama_minigrid_installed

needs_farama = pytest.mark.skipif(not farama_minigrid_installed(),
                                  reason="needs Farama's minigrid (the farama extra)")
needs_report = pytest.mark.skipif(importlib.util.find_spec("rliable") is None,
                                  reason="needs rliable (the report extra)")
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                 reason="needs wandb (the wandb extra)")
