"""Process set-up shared by ``train`` and ``sweep``: where compiled programs persist, how many
XLA CPU devices a group splits over, and the cores a sweep worker is pinned to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mtrl_sparse.cli import next_commands
from mtrl_sparse.presets import get_preset
from mtrl_sparse.run_dir import FINISHED_FILE
from mtrl_sparse.sweep import core_sets, parse_sweep_seeds
from mtrl_sparse.train_args import (
    COMPILE_CACHE_ENV,
    UsageError,
    compile_cache_dir,
    parse_seeds,
)


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


@pytest.mark.parametrize(("text", "seeds"), [
    ("5", [0, 1, 2, 3, 4]), ("1", [0]), ("2-4", [2, 3, 4]), ("3-3", [3]), ("1,3", [1, 3]),
])
def test_train_and_sweep_read_seeds_alike(text, seeds):
    """``--seeds N`` is N seeds from 0 in ``train`` as in ``sweep`` (it once trained seed N
    alone in ``train``); a TOML list of one is that seed."""
    assert parse_seeds(text) == seeds
    assert parse_sweep_seeds(text) == tuple(seeds)
    assert parse_sweep_seeds(seeds) == tuple(seeds)


@pytest.mark.parametrize("text", ["0", "3-1", "0,0", "-1", "a", ""])
def test_seeds_that_name_no_run_are_refused(text):
    with pytest.raises(UsageError, match="--seeds"):
        parse_seeds(text)


@pytest.mark.parametrize(("workers", "cores", "sets"), [
    (2, [0, 1], ["0", "1"]),
    (2, [0, 1, 2, 3], ["0,1", "2,3"]),
    (1, [0, 1], ["0,1"]),
    (3, [4, 5, 6], ["4", "5", "6"]),
])
def test_sweep_workers_get_disjoint_cores(workers, cores, sets):
    assert core_sets(workers, cores) == sets


def test_the_next_commands_train_the_other_side_then_report(tmp_path):
    config = dataclasses.replace(get_preset("minigrid-quick").config, method="dense")
    first, report = next_commands([], config, "minigrid-quick", tmp_path / "qs")
    assert first == (f"mtrl-sparse train --preset minigrid-quick --method gmp --sparsity 0.95 "
                     f"--run-dir {tmp_path / 'qs-gmp'}")
    assert report == f"mtrl-sparse report {tmp_path / 'qs'} {tmp_path / 'qs-gmp'} --out " \
                     f"{tmp_path / 'report'}"


@pytest.mark.parametrize("trained", ["dense", "gmp"])
def test_with_the_other_side_already_trained_only_the_report_is_next(tmp_path, trained):
    """The Quick start's pair: after the GMP run (or a dense rerun) whose twin has finished, the
    report, not a third training run."""
    base = get_preset("minigrid-quick").config
    dense, gmp = tmp_path / "qs", tmp_path / "qs-gmp"
    twin = gmp if trained == "dense" else dense
    twin.mkdir()
    (twin / FINISHED_FILE).write_text("{}")
    config = (dataclasses.replace(base, method="dense") if trained == "dense" else
              dataclasses.replace(base, method="gmp", sparsity=0.95))
    run_dir = dense if trained == "dense" else gmp
    assert next_commands([], config, "minigrid-quick", run_dir) == [
        f"mtrl-sparse report {dense} {gmp} --out {tmp_path / 'report'}"]
