"""Shared fixtures: tiny agents that compile in seconds."""

from __future__ import annotations

import os

# Tests run on the CPU, single-threaded XLA collectives off; determinism is a CPU guarantee.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
