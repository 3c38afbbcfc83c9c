"""What every command that starts runs shares: parsing ``train`` arguments into a config, and
setting up the process (XLA CPU devices for vmapped groups, the persistent compilation cache).

Used by ``mtrl_sparse.cli`` (``train``) and ``mtrl_sparse.sweep`` (each run of a sweep is the
``train`` arguments of its cell).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

import tyro

from mtrl_sparse.config import RunConfig, with_current_methods
from mtrl_sparse.presets import DEFAULT_PRESET, PRESETS
from mtrl_sparse.run_dir import CONFIG_FILE, read_config, read_preset


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit status 2."""



def tyro_parse(cls, args: list[str], default, prog: str, description: str | None = None):
    """tyro.cli, with its multi-line error panel folded into one ``UsageError`` line."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(cls, args=args, default=default, prog=prog, description=description)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            sys.stderr.write(captured.getvalue())
            raise
        raise UsageError(_first_message(captured.getvalue())) from None


def _first_message(panel: str) -> str:
    """The message of a tyro/rich error panel: its text up to the first rule, on one line."""
    lines = []
    for raw in panel.splitlines()[1:]:
        text = raw.strip().strip("│").strip()
        if not text or text.startswith("─") or text.startswith("╰"):
            if lines:
                break
            continue
        lines.append(text)
    message = re.sub(r"\s+", " ", " ".join(lines)).strip()
    return message or "invalid arguments"


def pop_flag(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """Remove ``name VALUE`` or ``name=VALUE`` from ``args``; return (VALUE or None, rest)."""
    rest, value, i = [], None, 0
    while i < len(args):
        if args[i] == name:
            if i + 1 >= len(args):
                raise UsageError(f"{name} needs a value")
            value, i = args[i + 1], i + 2
        elif args[i].startswith(name + "="):
            value, i = args[i].split("=", 1)[1], i + 1
        else:
            rest.append(args[i])
            i += 1
    return value, rest


FLAG_ALIASES = {"--total-steps": "--total-env-steps", "--arch": "--{agent}.arch",
                "--num-experts": "--{agent}.num-experts", "--track": "--wandb.track"}
"""Short flags of ``train``: ``{agent}`` is the agent of the preset (sac, ppo)."""


def expand_aliases(args: list[str], agent: str) -> list[str]:
    """``args`` with every ``FLAG_ALIASES`` flag (``--arch X`` or ``--arch=X``) spelt in full."""
    expanded = []
    for arg in args:
        flag, equals, value = arg.partition("=")
        if flag in FLAG_ALIASES:
            arg = FLAG_ALIASES[flag].format(agent=agent) + equals + value
        expanded.append(arg)
    return expanded


def _with_aliases_named(message: str, args: list[str], agent: str) -> str:
    """``message`` with each full flag the user gave by its short alias named as given."""
    for short, full in FLAG_ALIASES.items():
        if any(arg.partition("=")[0] == short for arg in args):
            message = message.replace(full.format(agent=agent), f"{short}")
    return message


def _alias_help(agent: str) -> str:
    return "short flags: " + ", ".join(
        f"{short} = {full.format(agent=agent)}" for short, full in FLAG_ALIASES.items())


def parse_train_args(args: list[str]) -> tuple[RunConfig, bool, str | None]:
    """(config, resume, preset name) from ``train`` arguments.

    A new run starts from the preset (default: ``DEFAULT_PRESET``); ``--resume`` starts from the
    config stored in ``--run-dir``, so that only flags given explicitly can differ from it. Either
    is parsed as the config class of the methods registered now (``config_class``), so methods
    registered after import have their ``--methods.NAME.*`` flags.
    """
    resume = "--resume" in args
    args = [a for a in args if a != "--resume"]
    preset_name, args = pop_flag(args, "--preset")
    if preset_name is not None and preset_name not in PRESETS:
        raise UsageError(f"unknown preset {preset_name!r}; accepted: {', '.join(PRESETS)}")
    if resume and "-h" not in args and "--help" not in args:
        run_dir, _ = pop_flag(args, "--run-dir")
        if run_dir is None:
            raise UsageError("--resume needs --run-dir, the directory of the run to continue")
        if not (Path(run_dir) / CONFIG_FILE).is_file():
            raise UsageError(f"cannot resume: {run_dir} holds no run (no {CONFIG_FILE})")
        stored_preset = read_preset(Path(run_dir))
        if preset_name is not None and preset_name != stored_preset:
            raise UsageError(
                f"--resume continues the run's stored config (preset {stored_preset}); "
                f"--preset {preset_name} differs from it"
            )
        base = read_config(Path(run_dir))
    else:
        base = with_current_methods(PRESETS[preset_name or DEFAULT_PRESET].config)
    try:
        config = tyro_parse(type(base), expand_aliases(args, base.AGENT), base,
                             "mtrl-sparse train",
                             description=f"{(type(base).__doc__ or '').strip()} "
                                         f"({_alias_help(base.AGENT)})")
    except UsageError as error:
        raise UsageError(_with_aliases_named(str(error), args, base.AGENT)) from None
    if resume:
        return config, True, read_preset(Path(config.run_dir))
    return config, False, preset_name or DEFAULT_PRESET


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: a count ``N`` (seeds 0..N-1), a range ``A-B`` (inclusive) or a list
    ``A,B,C`` -> the seeds; ``UsageError`` otherwise. ``train`` and ``sweep`` read it alike."""
    text = text.strip()
    if text.isdigit():
        if int(text) == 0:
            raise UsageError("--seeds 0: at least one seed is needed (N seeds 0..N-1, a range "
                             "A-B or a list A,B,C)")
        return list(range(int(text)))
    try:
        if "-" in text:
            low, high = (int(part) for part in text.split("-"))
            return checked_seeds(list(range(low, high + 1)), text)
        return checked_seeds([int(part) for part in text.split(",")], text)
    except ValueError:
        return checked_seeds([], text)


def checked_seeds(seeds: list[int], text: str) -> list[int]:
    """``seeds`` if they are distinct non-negative integers, at least one; else ``UsageError``
    naming ``text``, what ``--seeds`` was given."""
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r}: expected a count N (seeds 0..N-1), a range A-B or a "
                         "list A,B,C of distinct non-negative integers")
    return seeds


CPU_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. under ``taskset`` or a sweep
    worker pinned to a core; else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_devices_for(num_runs: int, cores: int | None = None) -> int:
    """How many XLA CPU devices a group of ``num_runs`` vmapped runs splits over: the largest
    divisor of ``num_runs`` not above the CPU cores (each device computes its share of the runs
    on its own core)."""
    cores = cores or usable_cores()
    return max(d for d in range(1, min(cores, num_runs) + 1) if num_runs % d == 0)


def use_cpu_devices(num_runs: int) -> None:
    """Before JAX starts its CPU backend: expose ``cpu_devices_for(num_runs)`` CPU devices, over
    which the group's run axis is sharded (``run_axis.run_axis_sharding``). On 2 cores 8
    MiniGrid runs took 1.41-1.52x less time than one after another this way, against 1.12-1.17x
    on one device (``bench/vmapped_runs.py``). Affects only the host platform (GPUs stay as
    they are); a count already in ``XLA_FLAGS`` is kept."""
    flags = os.environ.get("XLA_FLAGS", "")
    devices = cpu_devices_for(num_runs)
    if CPU_DEVICES_FLAG not in flags and devices > 1:
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_DEVICES_FLAG}={devices}".strip()


COMPILE_CACHE_ENV = "MTRL_SPARSE_COMPILE_CACHE"
"""Environment variable: the directory of the persistent compilation cache, or ``off``."""


def compile_cache_dir(environ: dict[str, str] | None = None) -> Path | None:
    """Where compiled programs persist between processes: ``$MTRL_SPARSE_COMPILE_CACHE``
    (``off``: nowhere), else ``$XDG_CACHE_HOME/mtrl-sparse/xla`` (``~/.cache/...``). None when
    off or when ``JAX_COMPILATION_CACHE_DIR`` already chooses one for JAX."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(COMPILE_CACHE_ENV, "")
    if chosen.lower() == "off" or "JAX_COMPILATION_CACHE_DIR" in environ:
        return None
    if chosen:
        return Path(chosen)
    cache_home = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "mtrl-sparse" / "xla"


def use_compile_cache() -> None:
    """JAX's persistent compilation cache, for programs that took at least a second to compile:
    the second run of a preset (a seed of a sweep, a resume) loads its compiled rollout and update
    instead of compiling them again (13 of the 44 s of a pooled ``minigrid-mt3`` run on 2 cores).
    A loaded program is the same executable, so results do not change."""
    import jax

    directory = compile_cache_dir()
    try:
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # an unwritable home: run without the cache
        directory = None
    if directory is not None:
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
