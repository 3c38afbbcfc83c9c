"""Process set-up shared by ``train`` and ``sweep``: where compiled programs persist, how many
XLA CPU devices a group splits over, and the cores a sweep worker is pinned to."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtrl_sparse.sweep import core_sets
from mtrl_sparse.train_args import COMPILE_CACHE_ENV, compile_cache_dir


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, Path.home() / ".cache" / "mtrl-sparse" / "xla"),
    ({"XDG_CACHE_HOME": "/c"}, Path("/c/mtrl-sparse/xla")),
    ({COMPILE_CACHE_ENV: "/x", "XDG_CACHE_HOME": "/c"}, Path("/x")),
    ({COMPILE_CACHE_ENV: "off"}, None),
    ({COMPILE_CACHE_ENV: "OFF"}, None),
    ({"JAX_COMPILATION_CACHE_DIR": "/j", "XDG_CACHE_HOME": "/c"}, None),  # JAX's own setting wins
])
def test_the_compile_cache_directory_follows_the_environment(environ, expected):
    assert compile_cache_dir(environ) == expected


@pytest.mark.parametrize(("workers", "cores", "sets"), [
    (2, [0, 1], ["0", "1"]),
    (2, [0, 1, 2, 3], ["0,1", "2,3"]),
    (1, [0, 1], ["0,1"]),
    (3, [4, 5, 6], ["4", "5", "6"]),
])
def test_sweep_workers_get_disjoint_cores(workers, cores, sets):
    assert core_sets(workers, cores) == sets
