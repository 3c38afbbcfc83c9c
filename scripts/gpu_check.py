"""The GPU check: proves the accelerator path in one short run, and writes every figure to one file.

``scripts/gpu_check.sh`` runs this after the offline install (see its header); run alone:

    python scripts/gpu_check.py --out gpu-check [--dry-run] [--budget 420]

Steps, in this order (each a process of its own, stopped at its time bound; a step that fails or
runs out of time is recorded as such and the next one starts; the summary is rewritten after
every step, so a check killed from outside still leaves one):

1. ``device``: the device JAX sees (platform, kind, count, memory), the versions, the matmul
   precision training uses (``mtrl_sparse.precision``).
2. ``quickstart``: the Quick start (``mtrl-sparse train``, the default preset) on that device: its
   final normalised return and wall time.
3. ``sac_update``: ``bench/update_throughput.py`` at the paper's SAC configuration: updates/s dense
   and static 95%, and the matmul precision's effect (TF32, JAX's ``default`` on NVIDIA GPUs,
   against the training precision: time ratio and the parameters' drift after 1 and 20 updates).
4. ``determinism``: the same seed twice, each in a fresh process: a short MiniGrid PPO run
   (rollouts and updates) and SAC updates, fingerprinted (SHA-256 of the parameters); once with
   the default XLA flags, once with ``--xla_gpu_deterministic_ops=true``: equal or not.
5. ``minigrid_vmapped``: K = 1, 8, 64 MiniGrid PPO runs (the Quick start preset) vmapped in one
   program: compile time, time per rollout-and-update, runs per hour (training iterations only,
   evaluations excluded).
6. ``sweep``: a sweep of two groups (dense and GMP 95%, two seeds each, shortened) with the local
   backend: wall time, runs finished, the device each run recorded.
7. ``tests``: the inner test loop (``-m "not slow and not cpu_numbers"``) on the device: passed,
   failed, skipped, and the failing tests' ids.

``--dry-run``: the same steps at tiny sizes on the CPU (``JAX_PLATFORMS=cpu``), as the test suite
runs it (``tests/test_gpu_check.py``), so that the check cannot rot between GPU runs.

Output under ``--out``: ``summary.json`` (every figure, the device, the date), ``summary.md`` (the
same as a table), ``logs/<step>.log`` (each step's output), ``runs/`` and ``sweep/``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
MIN_STEP_S = 5  # a step starts only with at least this much of the check's budget left


# ---------------------------------------------------------------------------------------------
# Probes: the measurements that no command of the project prints (run as `probe NAME`)
# ---------------------------------------------------------------------------------------------


def probe_device(dry_run: bool) -> dict[str, Any]:
    """The device JAX sees, the versions and the training precision."""
    from importlib.metadata import PackageNotFoundError, version

    import jax

    from mtrl_sparse.precision import matmul_precision

    devices = jax.devices()
    versions = {}
    for package in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
                    "orbax-checkpoint", "numpy", "mtrl-sparse"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    memory = devices[0].memory_stats() or {}
    smi = shutil.which("nvidia-smi")
    gpus = (subprocess.run([smi, "--query-gpu=name,driver_version,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True).stdout
            .strip().splitlines() if smi else [])
    return {
        "platform": devices[0].platform, "kind": devices[0].device_kind,
        "count": len(devices), "memory_bytes": memory.get("bytes_limit"),
        "nvidia_smi": gpus, "versions": versions, "python": sys.version.split()[0],
        "matmul_precision": matmul_precision(), "cpu_cores": os.cpu_count(),
    }


def _ppo_config(dry_run: bool, seed: int = 0):
    from mtrl_sparse.presets import DEFAULT_PRESET, get_preset

    config = get_preset("minigrid-smoke" if dry_run else DEFAULT_PRESET).config
    return dataclasses.replace(config, seed=seed, env=dataclasses.replace(config.env,
                                                                          backend="jax"))


def probe_fingerprint(dry_run: bool) -> dict[str, Any]:
    """SHA-256 of the parameters after a short MiniGrid PPO run and after SAC updates, seed 0."""
    import jax
    import numpy as np

    from mtrl_sparse.agent_kind import EpisodeTracker
    from mtrl_sparse.on_policy import OnPolicyRun

    def digest(tree: Any) -> str:
        sha = hashlib.sha256()
        for leaf in jax.tree.leaves(tree):
            if hasattr(leaf, "dtype") and not jax.dtypes.issubdtype(leaf.dtype,
                                                                     jax.dtypes.prng_key):
                sha.update(np.asarray(leaf).tobytes())
        return sha.hexdigest()[:16]

    run = OnPolicyRun(_ppo_config(dry_run))
    run.start()
    tracker = EpisodeTracker(run.task_names, run.num_envs)
    for _ in range(1 if dry_run else 3):
        run.iterate(tracker)
    ppo = digest(run.state)
    run.close()

    sys.path.insert(0, str(ROOT / "bench"))
    import update_throughput as bench  # noqa: E402  (a script of bench/, not a package)

    args = bench.parse_args(["--batch-size", "40", "--hidden", "32", "32"] if dry_run else [])
    from mtrl_sparse.methods.base import NetworkMethodSettings

    sac = bench.make_agent(NetworkMethodSettings("static", 0.95), args)
    k_init, k_batch = jax.random.split(jax.random.key(0))
    batch, task_ids = bench.random_batch(k_batch, args.batch_size, args.tasks)
    update = jax.jit(sac.update)
    state = jax.jit(sac.init)(k_init)
    for i in range(3 if dry_run else 20):
        state, _ = update(state, batch, task_ids, jax.random.key(i))
    return {"ppo": ppo, "sac": digest(state)}


def probe_vmapped(dry_run: bool) -> dict[str, Any]:
    """K MiniGrid PPO runs vmapped in one program: compile and iteration times, runs per hour."""
    from mtrl_sparse.agent_kind import EpisodeTracker
    from mtrl_sparse.on_policy_group import VmappedOnPolicyRuns
    from mtrl_sparse.presets import DEFAULT_PRESET

    rows = {}
    for k in (1, 2) if dry_run else (1, 8, 64):
        configs = [dataclasses.replace(_ppo_config(dry_run, seed), method="gmp", sparsity=0.95)
                   for seed in range(k)]
        group = VmappedOnPolicyRuns(configs)
        group.start()
        trackers = [EpisodeTracker(group.task_names, group.num_envs) for _ in range(k)]
        start = time.perf_counter()
        group.iterate(trackers)  # compiles
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(3):
            start = time.perf_counter()
            group.iterate(trackers)
            times.append(time.perf_counter() - start)
        group.close()
        iteration_s = statistics.median(times)
        iterations = configs[0].total_env_steps // configs[0].ppo.rollout_env_steps
        rows[str(k)] = {"first_call_s": compile_s, "iteration_s": iteration_s,
                        "iterations_per_run": iterations,
                        "runs_per_hour": k * 3600 / (iteration_s * iterations)}
        print(f"K={k}: {rows[str(k)]}", flush=True)
    return {"preset": "minigrid-smoke" if dry_run else DEFAULT_PRESET, "K": rows}


PROBES: dict[str, Callable[[bool], dict[str, Any]]] = {
    "device": probe_device, "fingerprint": probe_fingerprint, "vmapped": probe_vmapped,
}


# ---------------------------------------------------------------------------------------------
# Steps: commands with a time bound, and what is read from their output
# ---------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One step of the check: its bound (seconds, full and dry run) and how it runs."""

    name: str
    bound_s: float  # on the GPU node: all together fit the 8 minutes
    dry_bound_s: float  # the dry run's: generous, as a test suite's CPU is shared
    run: Callable[[Check, float], dict[str, Any]]  # (check, timeout) -> figures
    what: str


@dataclass
class Check:
    out: Path
    dry_run: bool
    env: dict[str, str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def command(self, name: str, argv: list[str], timeout: float,
                env: dict[str, str] | None = None) -> tuple[int | None, str]:
        """Run ``argv`` in its own process group, its output to ``logs/<name>.log``; the exit
        status (None: killed at ``timeout``) and the output."""
        log = self.out / "logs" / f"{name}.log"
        with open(log, "a") as f:
            f.write(f"$ {' '.join(argv)}\n")
            f.flush()
            process = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                       env={**self.env, **(env or {})}, start_new_session=True)
            try:
                code: int | None = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = None
        return code, log.read_text()

    def probe(self, name: str, probe: str, timeout: float,
              env: dict[str, str] | None = None) -> dict[str, Any]:
        result = self.out / "logs" / f"{name}-{probe}.json"
        result.unlink(missing_ok=True)
        argv = [sys.executable, str(Path(__file__).resolve()), "probe", probe,
                "--json", str(result)] + (["--dry-run"] if self.dry_run else [])
        code, _ = self.command(name, argv, timeout, env)
        if code != 0:
            raise StepFailed(code)
        return json.loads(result.read_text())


class StepFailed(Exception):
    """A step's process failed (``code``) or ran out of time (``code`` None)."""

    def __init__(self, code: int | None):
        super().__init__("timeout" if code is None else f"exit status {code}")
        self.code = code


def mtrl_sparse_command() -> list[str]:
    return [sys.executable, "-m", "mtrl_sparse.cli"]


def step_device(check: Check, timeout: float) -> dict[str, Any]:
    return check.probe("device", "device", timeout)


def step_quickstart(check: Check, timeout: float) -> dict[str, Any]:
    run_dir = check.out / "runs" / "quickstart"
    argv = mtrl_sparse_command() + ["train", "--run-dir", str(run_dir)]
    if check.dry_run:
        argv += ["--preset", "minigrid-smoke", "--env.backend", "jax"]
    start = time.perf_counter()
    code, _ = check.command("quickstart", argv, timeout)
    wall = time.perf_counter() - start
    if code != 0:
        raise StepFailed(code)
    finished = json.loads((run_dir / "finished.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    return {"preset": config["preset"], "wall_s": wall, "env_steps": finished["env_steps"],
            "env_steps_per_s": finished["env_steps"] / wall,
            "final_normalized_return": finished["last_eval"]["eval/normalized_return"],
            "device": config["provenance"]["device"]}


def step_sac_update(check: Check, timeout: float) -> dict[str, Any]:
    result = check.out / "logs" / "sac_update.json"
    argv = [sys.executable, str(ROOT / "bench" / "update_throughput.py"), "--json", str(result),
            "--compare-precision", "default"]
    argv += (["--batch-size", "40", "--hidden", "32", "32", "--rounds", "2", "--repeats", "2",
              "--warmup", "1", "--drift-updates", "3"] if check.dry_run else
             ["--rounds", "5", "--repeats", "10", "--warmup", "3", "--drift-updates", "20"])
    code, _ = check.command("sac_update", argv, timeout)
    if code != 0:
        raise StepFailed(code)
    return json.loads(result.read_text())


def step_determinism(check: Check, timeout: float) -> dict[str, Any]:
    """Two fresh processes per XLA flag setting, the same seed; the second of each pair loads the
    first's programs from the compilation cache (the same executable: any difference is the
    device's, not the compiler's)."""
    deadline = time.monotonic() + timeout
    figures: dict[str, Any] = {}
    base_flags = check.env.get("XLA_FLAGS", "")
    for label, flags in (("default_flags", base_flags),
                         ("deterministic_ops", f"{base_flags} {DETERMINISTIC_FLAG}".strip())):
        env = {"XLA_FLAGS": flags, "JAX_COMPILATION_CACHE_DIR": str(check.out / "xla-cache"),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
        prints = [check.probe("determinism", "fingerprint", deadline - time.monotonic(), env)
                  for _ in range(2)]
        figures[label] = {"xla_flags": flags,
                          **{part: prints[0][part] == prints[1][part] for part in prints[0]},
                          "fingerprints": prints}
    return figures


def step_minigrid_vmapped(check: Check, timeout: float) -> dict[str, Any]:
    return check.probe("minigrid_vmapped", "vmapped", timeout)


def step_sweep(check: Check, timeout: float) -> dict[str, Any]:
    out = check.out / "sweep"
    argv = mtrl_sparse_command() + [
        "sweep", "--out", str(out), "--method", "dense,gmp", "--sparsity", "0.95", "--seeds", "2",
        "--backend", "local"]
    argv += (["--preset", "minigrid-smoke", "--env.backend", "jax"] if check.dry_run else
             ["--preset", "minigrid-quick", "--total-env-steps", "40000"])
    start = time.perf_counter()
    code, _ = check.command("sweep", argv, timeout)
    wall = time.perf_counter() - start
    if code != 0:
        raise StepFailed(code)
    runs = sorted(path.parent for path in out.glob("*/seed*/finished.json"))
    devices = {str(run.relative_to(out)): json.loads((run / "config.json").read_text())
               ["provenance"]["device"]["platform"] for run in runs}
    return {"wall_s": wall, "runs_finished": len(runs), "groups": len({r.parent for r in runs}),
            "run_platforms": devices}


PYTEST_OUTCOMES = "PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS"
# pytest -v: "[gw0] [ 12%] PASSED tests/x.py::test" under xdist, "tests/x.py::test PASSED [ 12%]"
# in one process
PYTEST_LINE = re.compile(rf"\b({PYTEST_OUTCOMES}) (\S+::\S+)|^(\S+::\S+) ({PYTEST_OUTCOMES})\b",
                         re.M)


def step_tests(check: Check, timeout: float) -> dict[str, Any]:
    """The inner test loop on the device. Verbose output (one line per test), so that the counts
    survive a kill at the time bound."""
    platform = check.results.get("device", {}).get("figures", {}).get("platform", "cpu")
    selection = (["tests/agents/test_sparse_linear.py", "-k", "density_limit"]
                 if check.dry_run else ["tests"])
    workers = "0" if check.dry_run else str(min(8, max(1, (os.cpu_count() or 2) // 2)))
    argv = [sys.executable, "-m", "pytest", *selection, "-m", "not slow and not cpu_numbers",
            "-v", "-n", workers, "-p", "no:cacheprovider", "-o", "addopts="]
    env = {"JAX_PLATFORMS": platform, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    code, output = check.command("tests", argv, timeout, env)
    outcomes: dict[str, set[str]] = {}
    for outcome, test, test_alone, outcome_alone in PYTEST_LINE.findall(output):
        outcomes.setdefault((outcome or outcome_alone).lower(), set()).add(test or test_alone)
    figures = {outcome: len(tests) for outcome, tests in sorted(outcomes.items())}
    figures["failing"] = sorted(outcomes.get("failed", set()) | outcomes.get("error", set()))
    figures["pytest_exit"] = code
    if code is None:
        figures["note"] = "stopped at the time bound: counts so far"
    elif code not in (0, 1):  # 1: some tests failed (listed); other codes: pytest itself failed
        raise StepFailed(code)
    return figures


STEPS = [
    Step("device", 45, 300, step_device, "the device JAX sees, versions, matmul precision"),
    Step("quickstart", 100, 300, step_quickstart, "the Quick start trained on the device"),
    Step("sac_update", 70, 300, step_sac_update,
         "paper-config SAC update rate, dense and static 95%; TF32 against float32"),
    Step("determinism", 80, 400, step_determinism,
         "same seed twice, default flags and deterministic ops"),
    Step("minigrid_vmapped", 80, 300, step_minigrid_vmapped,
         "K = 1, 8, 64 MiniGrid PPO runs vmapped in one program"),
    Step("sweep", 70, 400, step_sweep, "a two-group sweep, local backend"),
    Step("tests", 90, 300, step_tests, "the inner test loop on the device"),
]


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


def write_summary(check: Check, started: str, install: dict[str, Any] | None) -> None:
    device = check.results.get("device", {}).get("figures", {})
    summary = {"date": started, "dry_run": check.dry_run,
               "device": f"{device.get('kind', '?')} ({device.get('platform', '?')})",
               "install": install, "steps": check.results}
    (check.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    lines = [f"# GPU check, {started}", "", f"Device: {summary['device']}"
             + (" (dry run)" if check.dry_run else ""), ""]
    if install:
        lines += [f"Offline install: {install.get('status')} in {install.get('seconds')} s", ""]
    lines += ["| step | status | seconds | figures |", "|---|---|---|---|"]
    for name, result in check.results.items():
        figures = json.dumps(result.get("figures", {}), default=str)
        lines.append(f"| {name} | {result['status']} | {result['seconds']:.0f} | {figures} |")
    (check.out / "summary.md").write_text("\n".join(lines) + "\n")


def run_check(out: Path, dry_run: bool, budget: float, install: dict[str, Any] | None) -> int:
    env = dict(os.environ)
    if dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    check = Check(out, dry_run, env)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    deadline = time.monotonic() + budget
    for step in STEPS:
        left = deadline - time.monotonic()
        bound = min(step.dry_bound_s if dry_run else step.bound_s, left)
        start = time.perf_counter()
        if left < MIN_STEP_S:
            result = {"status": "skipped", "why": "the check's time budget is spent"}
        else:
            try:
                result = {"status": "ok", "figures": step.run(check, bound)}
            except StepFailed as failure:
                result = {"status": "timeout" if failure.code is None else "failed",
                          "why": str(failure), "bound_s": bound}
            except Exception as error:  # a step's output could not be read: say which
                result = {"status": "failed", "why": f"{type(error).__name__}: {error}"}
        result["seconds"] = time.perf_counter() - start
        result["what"] = step.what
        check.results[step.name] = result
        write_summary(check, started, install)
        print(f"gpu check: {step.name}: {result['status']} ({result['seconds']:.0f} s)",
              flush=True)
    print(f"gpu check: summary in {out / 'summary.md'} and {out / 'summary.json'}")
    return 0 if all(r["status"] == "ok" for r in check.results.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    probe = sub.add_parser("probe", help="one measurement (the check runs these)")
    probe.add_argument("name", choices=sorted(PROBES))
    probe.add_argument("--json", type=Path, required=True)
    probe.add_argument("--dry-run", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes on the CPU (what the test suite runs)")
    parser.add_argument("--budget", type=float, default=420,
                        help="seconds for all steps together (default 420)")
    parser.add_argument("--install-json", type=Path, default=None,
                        help="the offline install's result (written by gpu_check.sh)")
    args = parser.parse_args(argv)
    if args.command == "probe":
        from mtrl_sparse.precision import use_training_precision

        use_training_precision()  # as the CLI's processes train
        figures = PROBES[args.name](args.dry_run)
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        return 0
    if args.out.exists() and any(p.name != "install.json" and p.name != "logs"
                                 for p in args.out.iterdir()):
        print(f"gpu check: --out {args.out} holds an earlier check; name a new folder",
              file=sys.stderr)
        return 2
    if args.budget <= 0:
        print(f"gpu check: --budget {args.budget} must be positive (seconds)", file=sys.stderr)
        return 2
    install = (json.loads(args.install_json.read_text())
               if args.install_json and args.install_json.is_file() else None)
    return run_check(args.out, args.dry_run, args.budget, install)


if __name__ == "__main__":
    sys.exit(main())
