"""Calling the CLI in-process: its exit code and output, and the shape of a usage error (one line
on stderr naming the problem, exit 2)."""

from __future__ import annotations

from mtrl_sparse.cli import main


def run_cli(capsys, args: list[str]) -> tuple[int, str, str]:
    """``main(args)``: (exit code, stdout, stderr)."""
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(capsys, args: list[str], *needles: str) -> str:
    """``main(args)`` exits 2 with one line on stderr holding every needle; returns that line."""
    code, _, err = run_cli(capsys, args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
