"""Download the wheels an offline machine lacks to install mtrl-sparse, into one folder.

Run on a machine with access to a package index; carry the folder (and the project's tree) to the
offline node; install there with one command (printed at the end):

    pip install --no-index --find-links WHEELHOUSE --no-build-isolation -e '.[test-core]'

What is downloaded: the project's requirements (``pyproject.toml``: the core dependencies, the
extras asked for, and the build requirements, since an offline install cannot fetch them either),
resolved for the target's Python version and platform as pip would resolve them there, **minus
every package the target already has**. The target's packages come from its ``pip freeze``
(``--freeze FILE``, the output of ``pip freeze --all`` there, so that pip and setuptools are
listed too): their versions are held fixed during the resolution (pip constraints), so
the downloaded wheels fit what is installed there, and they are not downloaded (jax, jaxlib and the
CUDA plugin stay the node's own). Only wheels are taken (``--only-binary=:all:``): the node may have
no compiler, and a source distribution that fails to build there cannot be fixed offline.

Steps:
1. read the requirements from ``pyproject.toml`` (extras expanded, self-references included);
2. resolve them for ``--python`` and ``--platform`` with the freeze as constraints
   (``pip install --dry-run --report``, which honours the target's Python version from pip 24.2
   on; with an older pip, the script runs a current one from a scratch virtual environment);
3. download the resolved packages the freeze lacks (``pip download --no-deps``) into ``--out``,
   with a ``requirements.txt`` naming them with their versions;
4. print the folder's size and the offline install command.

The default extra is ``test-core`` (pytest and Hypothesis): the GPU check runs the inner test loop
on the node. ``report`` (rliable, pandas, matplotlib's figures) and Farama's MiniGrid (pygame) are
left out: reports are made off the node, and the JAX MiniGrid needs neither.

Usage:
    python scripts/wheelhouse.py --freeze node-freeze.txt --out wheelhouse \
        [--python 3.12] [--platform manylinux_2_28_x86_64] [--extras test-core] [--dry-run]

Exit status: 0 done, 2 bad input (one line on stderr; nothing written), 1 pip failed (its last
lines are printed; a partly filled ``--out`` is removed).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
MIN_PIP = Version("24.2")  # `install --dry-run --report` honours --python-version with --target
MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
# The legacy manylinux tags and the glibc version each stands for.
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


def project_requirements(pyproject: dict, extras: Sequence[str]) -> list[str]:
    """The requirement strings of the project with ``extras``, self-referencing extras expanded.

    ``pyproject`` is the parsed ``pyproject.toml``. The build requirements are included: an
    offline install builds the project with the node's own packages (``--no-build-isolation``),
    so whatever of them the node lacks must be in the wheelhouse.

    Raises:
        UsageError: an extra the project does not define (the message lists the defined ones).
    """
    project = pyproject["project"]
    name = canonicalize_name(project["name"])
    defined = project.get("optional-dependencies", {})
    requirements = list(pyproject.get("build-system", {}).get("requires", []))
    requirements += project.get("dependencies", [])
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        if extra not in defined:
            raise UsageError(f"unknown extra {extra!r}; the project defines {sorted(defined)}")
        seen.add(extra)
        for line in defined[extra]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == name:  # "mtrl-sparse[farama,...]"
                pending += sorted(requirement.extras)
            else:
                requirements.append(line)
    return requirements


def read_freeze(lines: Iterable[str]) -> tuple[dict[str, str], set[str]]:
    """The pinned packages of a ``pip freeze`` output and the names of every package in it.

    Returns ``(pins, names)``: ``pins`` maps canonical names to the ``==`` version of each
    ``name==version`` line; ``names`` also holds the packages installed from a path or a URL
    (``name @ url``), which are not downloaded either but cannot be pinned. Comments, blank lines
    and editable installs (``-e ...``) are skipped.

    Raises:
        UsageError: a line that is none of these (the message quotes it).
    """
    pins: dict[str, str] = {}
    names: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-e ") or line.startswith("--"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            reason = str(error).splitlines()[0]
            raise UsageError(f"freeze line {number} is not a requirement: {raw.strip()!r} "
                             f"({reason}); expected lines such as 'jax==0.11.0'") from None
        name = canonicalize_name(requirement.name)
        names.add(name)
        specifiers = list(requirement.specifier)
        if len(specifiers) == 1 and specifiers[0].operator in ("==", "==="):
            pins[name] = specifiers[0].version
    return pins, names


def outdated_pins(requirements: Sequence[str], pins: dict[str, str]) -> dict[str, str]:
    """The target's packages whose versions do not satisfy the project's own requirement on them
    (e.g. a setuptools older than the build needs): ``{name: "version (wanted specifier)"}``.
    Their pins are dropped, so the resolution picks a version that fits and the wheelhouse
    carries it (installing it upgrades the target's)."""
    outdated = {}
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name in pins and not requirement.specifier.contains(pins[name], prereleases=True):
            outdated[name] = f"{pins[name]} (wanted {requirement.specifier})"
    return outdated


def platform_tags(platform: str) -> list[str]:
    """Every platform tag a node of ``platform`` installs, newest first.

    ``manylinux_2_28_x86_64`` stands for glibc 2.28 on x86_64, which also installs the wheels of
    every older glibc (``manylinux_2_27`` down to ``manylinux_2_5``, and the legacy
    ``manylinux2014/2010/1`` names); pip's ``--platform`` takes them one by one. Other tags
    (``macosx_...``, ``win_amd64``, ``linux_x86_64``) are passed as they are.
    """
    match = MANYLINUX.match(platform)
    if not match:
        return [platform]
    major, minor, arch = int(match[1]), int(match[2]), match[3]
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    tags += [f"{legacy}_{arch}" for legacy, glibc in LEGACY_MANYLINUX.items()
             if glibc <= (major, minor)]
    return tags


def _run(command: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


def pip_command(scratch: Path) -> list[str] | subprocess.CompletedProcess:
    """This interpreter's pip if it is at least ``MIN_PIP``; otherwise a current pip installed
    into a scratch virtual environment under ``scratch`` (or pip's failure to install it)."""
    own = [sys.executable, "-m", "pip"]
    result = _run([*own, "--version"])
    if result.returncode == 0 and Version(result.stdout.split()[1]) >= MIN_PIP:
        return own
    venv = scratch / "pip-venv"
    result = _run([sys.executable, "-m", "venv", str(venv)])
    if result.returncode != 0:
        return result
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    result = _run([*pip, "install", "--quiet", f"pip>={MIN_PIP}"])
    return pip if result.returncode == 0 else result


def _failed(action: str, result: subprocess.CompletedProcess) -> int:
    tail = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")]
    print(f"wheelhouse: pip failed to {action}:", *tail[-12:], sep="\n", file=sys.stderr)
    return 1


def resolve(pip: Sequence[str], requirements: Sequence[str], pins: dict[str, str],
            target: Sequence[str], scratch: Path
            ) -> list[tuple[str, str]] | subprocess.CompletedProcess:
    """``(name, version)`` of every package pip would install on the target, or pip's failure.

    ``target`` is the target's ``--python-version`` and ``--platform`` options. The pins are
    constraints: the resolution keeps the target's versions of what it has.
    """
    constraints = scratch / "constraints.txt"
    constraints.write_text("".join(f"{name}=={v}\n" for name, v in sorted(pins.items())))
    report = scratch / "report.json"
    result = _run([*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                   str(report), "--target", str(scratch / "target"), *target,
                   "--only-binary=:all:", "-c", str(constraints), *requirements])
    if result.returncode != 0:
        return result
    installs = json.loads(report.read_text())["install"]
    return [(canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"])
            for item in installs]


def folder_mib(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.iterdir()) / 2**20


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--freeze", type=Path, required=True,
                        help="the target's `pip freeze` output (its packages are not downloaded)")
    parser.add_argument("--out", type=Path, required=True,
                        help="the wheelhouse folder (must not exist, or be empty)")
    parser.add_argument("--python", default="3.12", help="the target's Python version (3.12)")
    parser.add_argument("--platform", default="manylinux_2_28_x86_64",
                        help="the target's newest platform tag (manylinux_2_28_x86_64: glibc "
                             "2.28 or newer on x86_64)")
    parser.add_argument("--extras", default="test-core",
                        help="comma-separated extras of the project to include (test-core)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be downloaded; write nothing")
    args = parser.parse_args(argv)
    try:
        if not re.fullmatch(r"3\.\d+", args.python):
            raise UsageError(f"--python {args.python!r} is not a Python version; expected "
                             "MAJOR.MINOR such as 3.12")
        if not args.freeze.is_file():
            raise UsageError(f"--freeze {args.freeze}: no such file; expected the target's "
                             "`pip freeze` output")
        if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
            raise UsageError(f"--out {args.out} exists and is not an empty folder; name a new one")
        extras = [extra.strip() for extra in args.extras.split(",") if extra.strip()]
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
        requirements = project_requirements(pyproject, extras)
        pins, installed = read_freeze(args.freeze.read_text().splitlines())
    except UsageError as error:
        print(f"wheelhouse: {error}", file=sys.stderr)
        return 2

    outdated = outdated_pins(requirements, pins)
    for name, why in outdated.items():
        print(f"wheelhouse: the target's {name} {why} is replaced by one that fits")
        del pins[name]
    target = ["--python-version", args.python, "--implementation", "cp",
              *[option for tag in platform_tags(args.platform) for option in ("--platform", tag)]]
    with tempfile.TemporaryDirectory() as scratch:
        pip = pip_command(Path(scratch))
        if isinstance(pip, subprocess.CompletedProcess):
            return _failed(f"install pip >= {MIN_PIP} into a scratch environment", pip)
        resolved = resolve(pip, requirements, pins, target, Path(scratch))
        if isinstance(resolved, subprocess.CompletedProcess):
            return _failed("resolve the requirements for the target", resolved)
        # not on the target: absent, or pinned at another version (an outdated pin, dropped)
        missing = sorted((name, v) for name, v in resolved
                         if name not in installed or name in outdated)
        print(f"{len(resolved)} packages resolved for Python {args.python} on {args.platform}; "
              f"the target has {len(resolved) - len(missing)}, {len(missing)} to download:")
        print("  " + " ".join(f"{name}=={v}" for name, v in missing))
        if args.dry_run or not missing:
            return 0
        return download(pip, missing, target, args.out, extras)


def download(pip: Sequence[str], missing: Sequence[tuple[str, str]], target: Sequence[str],
             out: Path, extras: Sequence[str]) -> int:
    """Download the wheels of ``missing`` into ``out`` and write its ``requirements.txt``; on a
    failure, leave ``out`` as it was (absent or empty)."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    result = _run([*pip, "download", "--no-deps", "--only-binary=:all:", *target, "--dest",
                   str(out), *[f"{name}=={v}" for name, v in missing]])
    if result.returncode != 0:
        if created:
            shutil.rmtree(out)
        else:
            for path in out.iterdir():
                path.unlink()
        return _failed("download the wheels", result)
    (out / "requirements.txt").write_text("".join(f"{name}=={v}\n" for name, v in missing))
    extras_spec = f"[{','.join(extras)}]" if extras else ""
    print(f"wheelhouse: {out} holds {len(missing)} wheels, {folder_mib(out):.1f} MiB")
    print("install on the target, from the project's tree (its own jax and build tools):")
    print(f"  pip install --no-index --find-links {out} --no-build-isolation -e '.{extras_spec}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
