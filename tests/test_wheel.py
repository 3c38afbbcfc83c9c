"""The package as others install it: ``python -m build`` gives an sdist holding the kernel sources
and a wheel built portable; the wheel, installed into a fresh virtual environment, trains; the
sdist installs without a C++ compiler (no kernels) as well as with one.

The fresh environments take the already installed dependencies from this one (a ``.pth`` line
naming its site-packages) and get the package itself from the wheel or the sdist alone
(``--no-deps``), so that what is tested is what the wheel and the sdist hold. Building needs the
package index (setuptools and jax, the build requirements, go into isolated build environments),
as the README's install does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL_SOURCE = "agents/kernels/sparse_matmul.cc"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel of this checkout, as ``python -m build`` makes them (in isolated
    environments with the build requirements, setuptools and jax, from the package index)."""
    pytest.importorskip("build", reason="python -m build needs the build package (test extra)")
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MTRL_SPARSE_NATIVE", "MTRL_SPARSE_PORTABLE")}
    result = subprocess.run([sys.executable, "-m", "build", "--sdist",
                             "--wheel", "--outdir", str(out), str(ROOT)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def fresh_venv(path: Path) -> Path:
    """A new virtual environment whose imports fall back on this one's site-packages; its
    python."""
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    Path(site.stdout.strip(), "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def pip_install(python: Path, target: Path, env: dict[str, str] | None = None) -> None:
    """Install the wheel or sdist ``target`` alone (an sdist builds in an isolated environment
    with its build requirements from the package index)."""
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                             "--no-deps", str(target)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def cli(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "mtrl_sparse.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_sdist_holds_the_kernel_sources_and_the_wheel_a_portable_build(dist):
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(name.endswith(KERNEL_SOURCE) for name in names), names
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        kernels = [n for n in names if "_sparse_kernels" in n]
        assert kernels, f"the wheel holds no kernels: {names}"
        binary = archive.read(kernels[0])
    assert "mtrl_sparse/agents/net_state.py" in names and "mtrl_sparse/envs/base.py" in names
    # -march=native on an AVX-512 or AVX2 host would let the compiler use those registers; a
    # baseline x86-64 build uses none (the ymm/zmm register names appear only in such code)
    if sysconfig.get_platform().endswith("x86_64"):
        disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-"],
                                     input=binary, capture_output=True)
        if disassembly.returncode == 0 and disassembly.stdout:
            text = disassembly.stdout.decode(errors="replace")
            assert "%ymm" not in text and "%zmm" not in text, "the wheel's kernels are native"


def test_the_wheel_trains_in_a_fresh_environment(dist, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    (wheel,) = dist.glob("*.whl")
    pip_install(python, wheel)
    version = cli(python, "--version", cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert "sparse CPU kernels: built" in version.stdout, version.stdout
    run = cli(python, "train", "--preset", "minigrid-smoke", "--no-progress", "--run-dir",
              str(tmp_path / "run"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "run" / "finished.json").is_file()
    where = subprocess.run([str(python), "-c", "import mtrl_sparse; print(mtrl_sparse.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True)
    assert str(tmp_path / "venv") in where.stdout, "the test imported another install"


def test_the_sdist_installs_without_a_compiler(dist, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    (sdist,) = dist.glob("*.tar.gz")
    pip_install(python, sdist, env={**os.environ, "CC": "/nonexistent/cc",
                                    "CXX": "/nonexistent/c++"})
    version = cli(python, "--version", cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert "sparse CPU kernels: not built" in version.stdout, version.stdout
