"""The documentation: the site builds with warnings as errors (broken links, missing pages,
docstrings mkdocstrings cannot render), its CLI reference is generated from the parser, and
every relative link of the README leads to a file of the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_site_builds_strictly_with_a_generated_cli_reference(tmp_path):
    config = ROOT / "docs" / "mkdocs.yml"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d",
         str(tmp_path / "site")],
        capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "--methods.gmp.prune-every-updates" in cli  # train's flags, from the parser
    assert "--no-references" in cli  # sweep's
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "masked_gradient_step" in api and "MethodEntry" in api


def test_every_relative_link_of_the_readme_leads_to_a_file():
    readme = (ROOT / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)\s]+)\)", readme)
             if not t.startswith(("http://", "https://", "#"))]
    assert links, "the README links into the docs"
    missing = [t for t in links if not (ROOT / t.split("#")[0]).is_file()]
    assert missing == []
