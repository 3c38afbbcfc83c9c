"""Throughput of the multi-task SAC update: dense versus static-sparse, and against a matmul.

What is measured (all in one process, so that the ratios are comparable on a noisy machine):

1. Updates per second of the full SAC ``update`` (critics, actor, temperatures, target critics)
   at the reference paper's configuration (Meta-World MT10: 10 tasks, observation size 39,
   action size 4; batch 1280; 3x400 ReLU trunks; twin critics), once with the ``dense`` method
   and once with ``static`` at 95% sparsity (actor and critics both). Each update is jitted once
   with the train state donated (``donate_argnums=0``), lowered and compiled ahead of time; the
   same compiled executable is timed and asked for its XLA cost analysis.
2. The time of a float32 ``jnp.dot`` of two 2048x2048 matrices (jitted) and its FLOP rate
   2 * 2048^3 / t: a practical peak of this machine for large matmuls. A (1280, 400) x
   (400, 400) dot, the shape of the update's dominant matmuls, is timed as well for context.
3. The static/dense time ratio. A static-sparse network stores its weights densely and multiplies
   them by boolean masks, so it does exactly the dense work plus the masking; target <= 1.05.
4. The update's FLOP count, (a) counted analytically from the matmuls (see ``analytic_flops``;
   the assumptions are printed), and (b) as reported by XLA's ``cost_analysis`` of the compiled
   update (which also counts elementwise work, e.g. Adam and activations).
5. The dense update's achieved FLOP rate (flops / update time, with the XLA and with the
   analytic count) as a fraction of the 2048^3 matmul rate; target >= 0.6.

Timing: after ``--warmup`` calls, every timing round runs ``--repeats`` back-to-back calls of each
workload and blocks on the result once at the end; rounds interleave the workloads (alternating
their order). The table reports the median over rounds of the per-call time and the min-max
spread over rounds (the noise). A ratio between two workloads is judged by the median over rounds
of that round's ratio, since the two were measured seconds apart under the same load; the ratio of
the medians and of the minimums are printed next to it (they should agree on a quiet machine).
Targets are reported as PASS/FAIL but the script always exits 0: it is a benchmark, not a test.

How to read it: the table gives per-call times (updates/s is calls/s of the update rows) and
GFLOP/s; a static/dense ratio near 1 means masking costs nothing noticeable, above 1.05 means the
masks (jnp.where on every weight, gradient and Adam step, materialised separately from the dots)
cost more than they should; a FLOP fraction well below 0.6 means the update is bound by
something other than matmuls (small or skinny matmuls, elementwise work, dispatch).

6. With ``--compare-precision P`` (e.g. ``default``, JAX's own choice: TF32 products on NVIDIA GPUs
   since Ampere), the dense update compiled under float32 matmul precision ``P`` as well, timed in
   the same rounds: its time over the training precision's (``mtrl_sparse.precision``: full
   float32), and how far the two precisions' parameters drift apart from the same state and
   batches after 1 and after ``--drift-updates`` updates (the largest absolute difference over
   all parameters, over the largest parameter magnitude), with each one's critic loss. On a CPU
   both precisions compute in float32: the drift is 0 there.

``--json FILE`` also writes the figures as JSON (what ``scripts/gpu_check.sh`` reads).

Run: ``python bench/update_throughput.py`` (about a minute on an idle 2-core CPU, a few minutes
under load); ``--help`` lists the knobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mtrl_sparse.agents.net_state import network_sparsity
from mtrl_sparse.agents.replay_buffer import Transition
from mtrl_sparse.agents.sac import SACConfig, make_sac
from mtrl_sparse.host_memory import reuse_freed_memory
from mtrl_sparse.methods.base import NetworkMethodSettings
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.precision import matmul_precision, use_training_precision

OBS_DIM = 39  # Meta-World observation size
ACTION_DIM = 4  # Meta-World action size
MATMUL_SIZE = 2048
RATIO_TARGET = 1.05  # static time / dense time must not exceed this
FLOP_FRACTION_TARGET = 0.6  # dense update FLOP rate / large-matmul FLOP rate must reach this


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10,
                        help="back-to-back calls of each workload per timing round")
    parser.add_argument("--rounds", type=int, default=15,
                        help="timing rounds (workloads interleaved; the median is reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before timing")
    parser.add_argument("--batch-size", type=int, default=1280,
                        help="transitions per update, summed over tasks")
    parser.add_argument("--hidden", type=int, nargs="+", default=[400, 400, 400],
                        help="hidden layer widths of actor and critics")
    parser.add_argument("--sparsity", type=float, default=0.95, help="sparsity of `static`")
    parser.add_argument("--distribution", choices=("erk", "uniform"), default="erk",
                        help="per-layer sparsity distribution of `static`")
    parser.add_argument("--tasks", type=int, default=10, help="number of tasks (heads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-precision", metavar="P", default=None,
                        help="also time the dense update under matmul precision P (default, "
                             "tensorfloat32, high, ...) and measure the parameters' drift")
    parser.add_argument("--drift-updates", type=int, default=20,
                        help="updates after which the two precisions' parameters are compared")
    parser.add_argument("--json", type=str, default=None, metavar="FILE",
                        help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    if args.batch_size % args.tasks:
        parser.error(f"--batch-size {args.batch_size} is not a multiple of --tasks {args.tasks}")
    if min(args.repeats, args.rounds) < 1 or args.warmup < 0:
        parser.error("--repeats and --rounds must be >= 1, --warmup >= 0")
    return args


# ---------------------------------------------------------------------------------------------
# Analytic FLOP count
# ---------------------------------------------------------------------------------------------


def mlp_forward_flops(batch: int, in_dim: int, hidden: Sequence[int], out_dim: int) -> list[int]:
    """Forward FLOPs of each Dense layer of an MLP: 2 * m * n * k for (m, k) x (k, n)."""
    widths = [in_dim, *hidden, out_dim]
    return [2 * batch * k * n for k, n in zip(widths[:-1], widths[1:], strict=False)]


def mlp_backward_flops(forward: list[int], weights: bool, first_input: bool) -> int:
    """Backward FLOPs of an MLP given its per-layer forward FLOPs.

    Each layer costs 1x its forward for the weight gradient (if ``weights``) and 1x for the input
    gradient; every layer but the first needs its input gradient to reach the layers below, the
    first one only if ``first_input`` (a gradient w.r.t. the network's own input is wanted).
    """
    per_weight = sum(forward) if weights else 0
    per_input = sum(forward[1:]) + (forward[0] if first_input else 0)
    return per_weight + per_input


@dataclass(frozen=True)
class FlopCount:
    critic_loss: int
    actor_loss: int

    @property
    def total(self) -> int:
        return self.critic_loss + self.actor_loss


def analytic_flops(batch: int, hidden: Sequence[int], tasks: int) -> FlopCount:
    """Matmul FLOPs of one SAC update (see ``ANALYTIC_ASSUMPTIONS``)."""
    actor_fwd = mlp_forward_flops(batch, OBS_DIM + tasks, hidden, tasks * 2 * ACTION_DIM)
    q_fwd = mlp_forward_flops(batch, OBS_DIM + ACTION_DIM + tasks, hidden, tasks)
    critic_loss = (
        sum(actor_fwd)  # next action: actor forward on next obs
        + 2 * sum(q_fwd)  # target twin critics forward on (next obs, next action)
        + 2 * sum(q_fwd)  # twin critics forward on (obs, action)
        + 2 * mlp_backward_flops(q_fwd, weights=True, first_input=False)
    )
    actor_loss = (
        sum(actor_fwd)
        + mlp_backward_flops(actor_fwd, weights=True, first_input=False)
        + 2 * sum(q_fwd)  # twin critics forward on (obs, sampled action)
        + 2 * mlp_backward_flops(q_fwd, weights=False, first_input=True)
    )
    return FlopCount(critic_loss=critic_loss, actor_loss=actor_loss)


ANALYTIC_ASSUMPTIONS = (
    "matmuls only, 2*m*n*k per (m,k)x(k,n); biases, activations, Adam, masks not counted",
    "masked weights are stored densely: static does the same matmul work as dense",
    "inputs: actor [obs, one-hot task], critic [obs, action, one-hot task]; all task heads",
    "  are computed (tasks x outputs wide), then each sample's own head is selected",
    "backward of a layer: 1x fwd for the weight grad + 1x fwd for the input grad",
    "critic loss: actor fwd (next obs) + 2 target Q fwd + 2 Q fwd + 2 Q bwd",
    "  (weight and input grads, except no input grad into the first layer: data)",
    "actor loss: actor fwd + bwd (weight and input grads, none into the first layer)",
    "  + 2 Q fwd + 2 Q bwd w.r.t. the action input only: input grads of every layer",
    "  incl. the first at its full [obs, action, task] width, no weight grads",
    "temperature loss and target-critic update: no matmuls",
)


def xla_flops(compiled: jax.stages.Compiled) -> float:
    """The ``flops`` of XLA's cost analysis (a dict, or a list of dicts in older JAX)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, dict):
        analysis = [analysis]
    return float(sum(entry.get("flops", 0.0) for entry in analysis or []))


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------


@dataclass
class Workload:
    """A compiled step and its mutable input; ``run(n)`` dispatches n calls and blocks once."""

    name: str
    step: Callable[[object], object]
    carry: object
    compile_seconds: float

    def run(self, calls: int) -> float:
        start = time.perf_counter()
        carry = self.carry
        for _ in range(calls):
            carry = self.step(carry)
        jax.block_until_ready(carry)
        self.carry = carry
        return (time.perf_counter() - start) / calls


def random_batch(key: jax.Array, batch: int, tasks: int) -> tuple[Transition, jax.Array]:
    k_obs, k_act, k_rew, k_next, k_term = jax.random.split(key, 5)
    transitions = Transition(
        obs=jax.random.normal(k_obs, (batch, OBS_DIM)),
        actions=jax.random.uniform(k_act, (batch, ACTION_DIM), minval=-1.0, maxval=1.0),
        rewards=jax.random.normal(k_rew, (batch,)),
        next_obs=jax.random.normal(k_next, (batch, OBS_DIM)),
        terminated=(jax.random.uniform(k_term, (batch,)) < 0.01).astype(jnp.float32),
    )
    task_ids = jnp.repeat(jnp.arange(tasks, dtype=jnp.int32), batch // tasks)
    return transitions, task_ids


def make_agent(settings: NetworkMethodSettings, args: argparse.Namespace):
    config = SACConfig(hidden_sizes=tuple(args.hidden), batch_size=args.batch_size)
    network = build_network(settings)
    return make_sac(config, args.tasks, OBS_DIM, ACTION_DIM, network, network)


def sac_workload(
    name: str, settings: NetworkMethodSettings, args: argparse.Namespace,
    precision: str | None = None,
) -> tuple[Workload, float, str]:
    """The compiled, state-donating SAC update of one method, its XLA FLOP count, and the
    measured sparsity of its actor and critic masks. ``precision``: compiled under that float32
    matmul precision (None: the process's)."""
    sac = make_agent(settings, args)
    key = jax.random.key(args.seed)
    k_init, k_batch, k_update = jax.random.split(key, 3)
    state = jax.block_until_ready(jax.jit(sac.init)(k_init))
    sparsity = (f"actor {float(network_sparsity(state.actor.masks)):.1%}, "
                f"critic {float(network_sparsity(state.critic.masks)):.1%}")
    batch, task_ids = random_batch(k_batch, args.batch_size, args.tasks)
    start = time.perf_counter()
    with jax.default_matmul_precision(precision or matmul_precision()):
        compiled = jax.jit(sac.update, donate_argnums=0).lower(state, batch, task_ids,
                                                             k_update).compile()
    compile_seconds = time.perf_counter() - start
    step = lambda s: compiled(s, batch, task_ids, k_update)[0]
    return Workload(name, step, state, compile_seconds), xla_flops(compiled), sparsity


def precision_drift(args: argparse.Namespace, precisions: Sequence[str]) -> dict[str, object]:
    """How far the dense update's parameters drift apart under two matmul precisions.

    From the same initial state, both run the same ``--drift-updates`` updates (same batches and
    keys); after the first and after the last, the drift is the largest absolute difference
    between the two runs' parameters (every leaf of the actor, critics, targets and
    temperatures) over the largest parameter magnitude. Returns the drifts and each precision's
    critic loss after the first and the last update.
    """
    sac = make_agent(NetworkMethodSettings("dense", 0.0), args)
    k_init, k_batch = jax.random.split(jax.random.key(args.seed))
    batch, task_ids = random_batch(k_batch, args.batch_size, args.tasks)
    snapshots: dict[str, list] = {}
    losses: dict[str, list[float]] = {}
    for precision in precisions:
        with jax.default_matmul_precision(precision):
            update = jax.jit(sac.update)
            state = jax.jit(sac.init)(k_init)
            snapshots[precision], losses[precision] = [], []
            for i in range(args.drift_updates):
                state, metrics = update(state, batch, task_ids, jax.random.key(i))
                if i in (0, args.drift_updates - 1):
                    snapshots[precision].append(jax.tree.leaves(state))
                    losses[precision].append(float(metrics["critic_loss"]))
    first, second = precisions

    def drift(index: int) -> float:
        pairs = list(zip(snapshots[first][index], snapshots[second][index], strict=True))
        scale = max(float(jnp.max(jnp.abs(a))) for a, _ in pairs if a.dtype == jnp.float32)
        return max(float(jnp.max(jnp.abs(a - b))) for a, b in pairs
                   if a.dtype == jnp.float32) / scale

    return {"drift_after_1": drift(0), f"drift_after_{args.drift_updates}": drift(-1),
            "critic_loss": losses}


def matmul_workload(name: str, m: int, k: int, n: int, seed: int) -> Workload:
    """A jitted float32 (m, k) x (k, n) dot; the carry is only its last output."""
    k_a, k_b = jax.random.split(jax.random.key(seed))
    a = jax.random.normal(k_a, (m, k), jnp.float32)
    b = jax.random.normal(k_b, (k, n), jnp.float32)
    start = time.perf_counter()
    compiled = jax.jit(jnp.dot).lower(a, b).compile()
    compile_seconds = time.perf_counter() - start
    return Workload(name, lambda _: compiled(a, b), jnp.zeros((m, n)), compile_seconds)


def time_interleaved(workloads: list[Workload], args: argparse.Namespace) -> dict[str, list[float]]:
    """Per-call seconds of each workload in each round; order alternates between rounds."""
    if args.warmup:
        for w in workloads:
            w.run(args.warmup)
    times: dict[str, list[float]] = {w.name: [] for w in workloads}
    for r in range(args.rounds):
        for w in workloads if r % 2 == 0 else workloads[::-1]:
            times[w.name].append(w.run(args.repeats))
    return times


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def cpu_description() -> str:
    """The CPU model, its widest vector extensions and the core count (Linux; else platform)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    vector = [name for name in ("avx512f", "avx2", "fma", "avx") if name in flags]
    return f"{model} ({', '.join(vector) or 'no AVX'}; {os.cpu_count()} cores)"


def print_header(args: argparse.Namespace) -> None:
    print("SAC update throughput (multi-task SAC, twin critics, one head per task)")
    print(f"  jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"  CPU: {cpu_description()}")
    print(f"  batch {args.batch_size}, hidden {'x'.join(map(str, args.hidden))}, "
          f"tasks {args.tasks}, obs {OBS_DIM}, action {ACTION_DIM}; static: "
          f"{args.sparsity:.0%} {args.distribution} (actor and critics)")
    print(f"  timing: {args.warmup} warm-up calls, {args.rounds} interleaved rounds x "
          f"{args.repeats} calls, median of per-call time over rounds")


def print_table(workloads: list[Workload], times: dict[str, list[float]],
                flops: dict[str, float]) -> None:
    print()
    print(f"{'workload':<26}{'compile s':>10}{'median ms':>11}{'min-max ms':>15}"
          f"{'calls/s':>10}{'GFLOP':>9}{'GFLOP/s':>10}")
    for w in workloads:
        t = times[w.name]
        median = statistics.median(t)
        spread = f"{min(t) * 1e3:.1f}-{max(t) * 1e3:.1f}"
        gflop = flops[w.name] / 1e9
        print(f"{w.name:<26}{w.compile_seconds:>10.2f}{median * 1e3:>11.2f}{spread:>15}"
              f"{1 / median:>10.2f}{gflop:>9.2f}{gflop / median:>10.1f}")
    print("  (calls/s = updates/s for the updates; their GFLOP: XLA cost analysis; of the "
          "dots: 2*m*n*k)")


def print_flop_counts(analytic: FlopCount, xla: dict[str, float]) -> None:
    print()
    print("FLOPs per update")
    print(f"  analytic (matmuls): {analytic.total / 1e9:.3f} GFLOP "
          f"(critic loss {analytic.critic_loss / 1e9:.3f}, actor loss "
          f"{analytic.actor_loss / 1e9:.3f})")
    for name, value in xla.items():
        print(f"  XLA cost_analysis, {name}: {value / 1e9:.3f} GFLOP "
              f"({value / analytic.total:.3f} x analytic)")
    print("  analytic assumptions:")
    for line in ANALYTIC_ASSUMPTIONS:
        print(f"      {line}" if line.startswith(" ") else f"    - {line}")


@dataclass(frozen=True)
class TimeRatio:
    """A time ratio num/den three ways; ``paired`` (the one judged) cancels slow load drift."""

    paired: float  # median over rounds of the same round's ratio
    of_medians: float
    of_minimums: float

    def scaled(self, factor: float) -> TimeRatio:
        return TimeRatio(self.paired * factor, self.of_medians * factor,
                         self.of_minimums * factor)

    def columns(self) -> str:
        return f"{self.paired:>7.3f}  ({self.of_medians:.3f}, {self.of_minimums:.3f})"


def time_ratio(times: dict[str, list[float]], num: str, den: str) -> TimeRatio:
    return TimeRatio(
        paired=statistics.median(n / d for n, d in zip(times[num], times[den], strict=True)),
        of_medians=statistics.median(times[num]) / statistics.median(times[den]),
        of_minimums=min(times[num]) / min(times[den]),
    )


def print_ratios(times: dict[str, list[float]], names: dict[str, str],
                 flops: dict[str, float], dense_flops: dict[str, float]) -> None:
    dense, static, big, layer = (names[k] for k in ("dense", "static", "big", "layer"))
    print()
    print("Ratios: median over rounds of the per-round ratio (ratio of medians, of minimums)")
    ratio = time_ratio(times, static, dense)
    print(f"  {'static / dense update time':<46}{ratio.columns()}  "
          f"target <= {RATIO_TARGET}  {verdict(ratio.paired <= RATIO_TARGET)}")
    for source, value in dense_flops.items():
        # rate / matmul rate = (flops / flops_mm) * (t_mm / t_update)
        fraction = time_ratio(times, big, dense).scaled(value / flops[big])
        label = f"dense update rate ({source} flops) / {MATMUL_SIZE}^3"
        print(f"  {label:<46}{fraction.columns()}  target >= {FLOP_FRACTION_TARGET}   "
              f"{verdict(fraction.paired >= FLOP_FRACTION_TARGET)}")
    context = time_ratio(times, big, layer).scaled(flops[layer] / flops[big])
    label = f"{layer} rate / {MATMUL_SIZE}^3 (context)"
    print(f"  {label:<46}{context.columns()}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print_header(args)
    dense, dense_xla, _ = sac_workload(
        "update dense", NetworkMethodSettings("dense", 0.0), args)
    static, static_xla, static_sparsity = sac_workload(
        f"update static {args.sparsity:.0%}",
        NetworkMethodSettings("static", args.sparsity, args.distribution), args)
    print(f"  static masks drawn: {static_sparsity} sparse")
    big = matmul_workload(f"dot {MATMUL_SIZE}^3", MATMUL_SIZE, MATMUL_SIZE, MATMUL_SIZE,
                          args.seed)
    width = args.hidden[0]
    layer = matmul_workload(f"dot {args.batch_size}x{width}x{width}", args.batch_size, width,
                            width, args.seed)
    workloads = [dense, static, big, layer]
    flops = {
        dense.name: dense_xla,
        static.name: static_xla,
        big.name: 2.0 * MATMUL_SIZE**3,
        layer.name: 2.0 * args.batch_size * width * width,
    }
    if args.compare_precision:
        other, other_xla, _ = sac_workload(f"update dense @ {args.compare_precision}",
                                           NetworkMethodSettings("dense", 0.0), args,
                                           args.compare_precision)
        workloads.append(other)
        flops[other.name] = other_xla
    times = time_interleaved(workloads, args)
    analytic = analytic_flops(args.batch_size, args.hidden, args.tasks)

    print_table(workloads, times, flops)
    print_flop_counts(analytic, {dense.name: dense_xla, static.name: static_xla})
    names = {"dense": dense.name, "static": static.name, "big": big.name, "layer": layer.name}
    print_ratios(times, names, flops, {"XLA": dense_xla, "analytic": float(analytic.total)})
    figures = {
        "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
        "jax": jax.__version__, "matmul_precision": matmul_precision(),
        "updates_per_s": {"dense": 1 / statistics.median(times[dense.name]),
                          f"static {args.sparsity:.0%}": 1 / statistics.median(times[static.name])},
        "static_over_dense_time": time_ratio(times, static.name, dense.name).paired,
        "dot_gflop_per_s": flops[big.name] / 1e9 / statistics.median(times[big.name]),
    }
    if args.compare_precision:
        figures["precision"] = print_precision(args, times, dense.name, workloads[-1].name)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


def print_precision(args: argparse.Namespace, times: dict[str, list[float]], dense: str,
                    other: str) -> dict[str, object]:
    """Print and return the comparison of the training precision with ``--compare-precision``."""
    training = matmul_precision()
    ratio = time_ratio(times, other, dense)
    drift = precision_drift(args, [training, args.compare_precision])
    print()
    print(f"Matmul precision: training {training!r} against {args.compare_precision!r}")
    print(f"  {args.compare_precision} / {training} dense update time   {ratio.columns()}")
    for key, value in drift.items():
        print(f"  {key}: {value}")
    return {"training": training, "other": args.compare_precision,
            "other_over_training_time": ratio.paired, **drift}


if __name__ == "__main__":
    reuse_freed_memory()  # as the CLI does: time what a run gets
    use_training_precision()
    sys.exit(main())
