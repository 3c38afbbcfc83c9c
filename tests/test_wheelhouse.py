"""``scripts/wheelhouse.py``: the wheels an offline node lacks, for its Python and platform.

The requirement sets (what a GPU node installs, and that they leave out what the node must not
need), the freeze and platform parsing, bad input (one line, exit 2, nothing written), and one
real download from the package index: a target that lacks one package of the project's gets
that package's wheel only.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging import tags
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "wheelhouse.py"
_spec = importlib.util.spec_from_file_location("wheelhouse", SCRIPT)
wheelhouse = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wheelhouse)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(line).name) for line in requirements}


def test_a_gpu_node_needs_neither_report_tools_nor_pygame():
    node = names(wheelhouse.project_requirements(PYPROJECT, ["test-core"]))
    assert {"jax", "flax", "optax", "orbax-checkpoint", "gymnasium", "metaworld", "mujoco",
            "tyro", "tensorboardx", "pytest", "hypothesis", "setuptools"} <= node
    assert not node & {"rliable", "pandas", "matplotlib", "minigrid", "pygame", "ray", "mkdocs"}


def test_the_test_extra_expands_its_own_extras():
    everything = names(wheelhouse.project_requirements(PYPROJECT, ["test"]))
    assert {"pytest", "minigrid", "rliable", "pandas", "ray", "mkdocs", "ruff"} <= everything
    assert "mtrl-sparse" not in everything


def test_an_unknown_extra_is_named_with_the_defined_ones():
    with pytest.raises(wheelhouse.UsageError, match=r"unknown extra 'gpu'.*'test-core'"):
        wheelhouse.project_requirements(PYPROJECT, ["gpu"])


def test_a_freeze_pins_versions_and_names_packages_from_urls():
    pins, installed = wheelhouse.read_freeze([
        "# comment", "", "jax==0.11.0", "Flax==0.12.8", "-e git+https://x/y.git#egg=mtrl-sparse",
        "tensorstore @ file:///wheels/tensorstore-0.1.86.whl", "numpy>=2"])
    assert pins == {"jax": "0.11.0", "flax": "0.12.8"}
    assert installed == {"jax", "flax", "tensorstore", "numpy"}


def test_a_freeze_line_that_is_no_requirement_is_quoted():
    with pytest.raises(wheelhouse.UsageError, match=r"line 2 .*'jax is 0.11'"):
        wheelhouse.read_freeze(["jax==0.11.0", "jax is 0.11"])


def test_a_target_package_too_old_for_the_project_is_replaced():
    requirements = ["setuptools>=69", "jax>=0.6", "tqdm>=4.66"]
    pins = {"setuptools": "65.5.0", "jax": "0.11.0"}
    assert wheelhouse.outdated_pins(requirements, pins) == {
        "setuptools": "65.5.0 (wanted >=69)"}


def test_a_manylinux_platform_installs_every_older_glibc():
    found = wheelhouse.platform_tags("manylinux_2_28_x86_64")
    assert found[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
            "manylinux1_x86_64"} <= set(found)
    older = wheelhouse.platform_tags("manylinux_2_12_aarch64")
    assert "manylinux_2_17_aarch64" not in older and "manylinux2014_aarch64" not in older
    assert "manylinux2010_aarch64" in older
    assert wheelhouse.platform_tags("win_amd64") == ["win_amd64"]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


@pytest.mark.parametrize("case", ["no freeze", "bad python", "out not empty", "unknown extra",
                                  "bad freeze line"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("jax==0.11.0\n" + ("jax is 0.11\n" if case == "bad freeze line" else ""))
    out = tmp_path / "wheels"
    if case == "out not empty":
        out.mkdir()
        (out / "keep.whl").write_text("mine")
    args = {"no freeze": ["--freeze", str(tmp_path / "missing.txt")],
            "bad python": ["--freeze", str(freeze), "--python", "twelve"],
            "unknown extra": ["--freeze", str(freeze), "--extras", "gpu"]}.get(
        case, ["--freeze", str(freeze)])
    result = run_script(*args, "--out", str(out))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("wheelhouse: ")
    if case == "out not empty":
        assert [p.name for p in out.iterdir()] == ["keep.whl"]
        assert (out / "keep.whl").read_text() == "mine"
    else:
        assert not out.exists()


@pytest.mark.slow
def test_a_target_lacking_one_package_gets_that_wheel_only(tmp_path):
    """This interpreter's own environment as the target, less tqdm: the resolution against the
    package index keeps every other package as installed, so only tqdm's wheel comes down (and
    the wheels of what is too old for the project here, such as the setuptools of a venv that
    Python 3.11 made, which the build requirement setuptools>=69 rejects)."""
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("\n".join(line for line in frozen
                                if not line.lower().startswith("tqdm==")) + "\n")
    platform = next(tag for tag in tags.platform_tags() if tag.startswith("manylinux_"))
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    out = tmp_path / "wheels"
    result = run_script("--freeze", str(freeze), "--out", str(out), "--python", python,
                        "--platform", platform)
    assert result.returncode == 0, result.stderr
    pins, _ = wheelhouse.read_freeze(frozen)
    outdated = wheelhouse.outdated_pins(
        wheelhouse.project_requirements(PYPROJECT, ["test-core"]), pins)
    wheels = {canonicalize_name(p.name.split("-")[0]) for p in out.glob("*.whl")}
    assert wheels == {"tqdm", *outdated}
    listed = {line.split("==")[0] for line in (out / "requirements.txt").read_text().split()}
    assert listed == wheels
    assert "--no-index --find-links" in result.stdout
