"""MkDocs hooks of the documentation site: the CLI reference is generated from the parser.

A page holding the line ``<!-- cli-help COMMAND -->`` gets, in its place, what ``mtrl-sparse
COMMAND --help`` prints (``mtrl-sparse --help`` for ``COMMAND`` ``-``), as a code block, so the
reference never drifts from the flags the CLI accepts.
"""

from __future__ import annotations

import contextlib
import io
import os
import re

MARKER = re.compile(r"^<!-- cli-help (\S+) -->$", re.M)


def cli_help(command: str) -> str:
    """What ``mtrl-sparse [COMMAND] --help`` prints, at a fixed width."""
    from mtrl_sparse.cli import main

    os.environ["COLUMNS"] = "100"
    argv = ["--help"] if command == "-" else [command, "--help"]
    out = io.StringIO()
    with (contextlib.redirect_stdout(out), contextlib.redirect_stderr(out),
          contextlib.suppress(SystemExit)):
        main(argv)
    return out.getvalue().rstrip()


def on_page_markdown(markdown: str, **kwargs) -> str:
    """Replace every cli-help marker of a page with the command's help."""
    return MARKER.sub(lambda m: f"```text\n{cli_help(m.group(1))}\n```", markdown)
