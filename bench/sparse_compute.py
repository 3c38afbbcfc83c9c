"""Sparse kernels against the masked dense computation, measured in one process.

For each sparsity (default 80, 90, 95 and 99%), the time of the sparse-kernel computation over
the time of the masked dense one (``--compute sparse`` against ``--compute dense``; a ratio
above 1 means the kernels are faster), the two timed alternately over ``--rounds`` rounds and
the ratio the median of the rounds' ratios:

- layers: forward and backward (input and weight gradients) of single masked layers at the
  shapes the presets train: the paper-config SAC hidden layer (batch 1280, 400 -> 400), the
  un-pooled MiniGrid CNN's second and third convolutions (dense: the window product; sparse:
  the direct convolution on the map) and its MT3 head layer (1,024 -> 3 x 128), per minibatch
  of 256;
- sac: the full paper-config SAC update (MT10, batch 1280, 3 x 400, twin critics; static masks,
  actor and critics at the sparsity, per ``--distributions``: ERK by default);
- ppo: the full un-pooled ``minigrid-mt3`` PPO update (56 actor and 1 critic minibatch steps on
  one rollout of 2,000 env steps; static masks, per ``--distributions``).
- run: whole ``minigrid-mt3`` training runs, process start to exit (``mtrl-sparse train`` in a
  subprocess, one after another): the dense method, and GMP at 95% computing densely and with
  ``--compute auto`` (the mode for masks that start dense); the runs' wall times and ratios.

The 99.9% rows are not a target: the products then have almost nothing to do, so their time is
what the rest of the update costs (elementwise ops, optimizer, small layers), an upper bound on
any speed-up sparse products can give.

Targets (issue: sparse kernels): SAC update at 95% >= 2x, at 99% >= 4x; PPO update at 95% >= 2x;
a whole GMP-95% MiniGrid run faster than the dense run.

Usage: python bench/sparse_compute.py [--sections layers sac ppo run]
       [--sparsities 0.8 0.9 0.95 0.99 0.999] [--rounds 5] [--distributions erk uniform]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from update_throughput import (  # the update benchmark's batch and CPU line
    ACTION_DIM,
    OBS_DIM,
    cpu_description,
    random_batch,
)

from mtrl_sparse.agent_kind import EpisodeTracker
from mtrl_sparse.agents.cnn import kernel_patches
from mtrl_sparse.agents.sac import SACConfig, make_sac
from mtrl_sparse.agents.sparse_linear import (
    compress,
    kernel_view,
    kernels_available,
    sparse_conv,
    sparse_matmul,
)
from mtrl_sparse.config import RunConfig
from mtrl_sparse.host_memory import reuse_freed_memory
from mtrl_sparse.methods.base import NetworkMethodSettings
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.on_policy import OnPolicyRun
from mtrl_sparse.presets import get_preset

TASKS = 10
LAYERS = {  # name: (batch, inputs, outputs)
    "SAC hidden 400x400, batch 1280": (1280, 400, 400),
    "MiniGrid MT3 head layer 1024 -> 384, batch 256": (256, 1024, 384),
}
CONVOLUTIONS = {  # name: (batch, height, width, channels, outputs), 2x2 windows
    "MiniGrid conv_1 (2x2x16 -> 32) on 256 6x6 maps": (256, 6, 6, 16, 32),
    "MiniGrid conv_2 (2x2x32 -> 64) on 256 5x5 maps": (256, 5, 5, 32, 64),
}


def seconds_per_call(step: Callable[[object], object], carry: object, calls: int
                     ) -> tuple[float, object]:
    start = time.perf_counter()
    for _ in range(calls):
        carry = step(carry)
    jax.block_until_ready(carry)
    return (time.perf_counter() - start) / calls, carry


def ratio_of(dense: tuple, sparse: tuple, rounds: int, calls: int) -> tuple[float, float, float]:
    """(median dense seconds, median sparse seconds, median of the rounds' dense/sparse) of two
    (step, carry) workloads, warmed up, then timed alternately."""
    workloads = {"dense": list(dense), "sparse": list(sparse)}
    for w in workloads.values():
        _, w[1] = seconds_per_call(w[0], w[1], 2)
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    for r in range(rounds):
        for name in ("dense", "sparse") if r % 2 == 0 else ("sparse", "dense"):
            seconds, workloads[name][1] = seconds_per_call(*workloads[name], calls)
            times[name].append(seconds)
    ratios = [d / s for d, s in zip(times["dense"], times["sparse"], strict=True)]
    return statistics.median(times["dense"]), statistics.median(times["sparse"]), \
        statistics.median(ratios)


def forward_backward_steps(dense: Callable, sparse: Callable, x: jax.Array, w: jax.Array,
                           c: jax.Array):
    """(dense, sparse) workloads (step, carry): the value and gradients of ``sum(f(x, w) * c)``
    w.r.t. ``x`` and ``w`` for each of the two ways ``f`` of computing a layer."""

    def step_of(layer):
        grad = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(layer(x, w) * c), (0, 1)))
        return lambda carry: grad(x + 0.0 * carry[0], w)[0:1]

    return (step_of(dense), (jnp.zeros(()),)), (step_of(sparse), (jnp.zeros(()),))


def layer_workloads(batch: int, inputs: int, outputs: int, sparsity: float):
    """(dense, sparse) steps of one layer's forward and backward pass: value and gradients of
    ``sum(y * c)`` w.r.t. the input and the weights."""
    k_mask, k_w, k_x, k_c = jax.random.split(jax.random.key(0), 4)
    mask = jax.random.uniform(k_mask, (inputs, outputs)) >= sparsity
    w = jnp.where(mask, jax.random.normal(k_w, (inputs, outputs)), 0.0)
    x = jax.random.normal(k_x, (batch, inputs))
    c = jax.random.normal(k_c, (batch, outputs))
    index = compress(mask, mask.size)
    return forward_backward_steps(lambda x, w: x @ jnp.where(mask, w, 0.0),
                                  lambda x, w: sparse_matmul(x, w, index), x, w, c)


def conv_workloads(batch: int, height: int, width: int, channels: int, outputs: int,
                   sparsity: float):
    """(dense, sparse) steps of one 2x2 convolution's forward and backward pass: the window
    product of the masked kernel (dense compute) and the direct convolution (sparse)."""
    k_mask, k_w, k_x, k_c = jax.random.split(jax.random.key(0), 4)
    shape = (2, 2, channels, outputs)
    mask = jax.random.uniform(k_mask, shape) >= sparsity
    kernel = jnp.where(mask, jax.random.normal(k_w, shape), 0.0)
    x = jax.random.normal(k_x, (batch, height, width, channels))
    c = jax.random.normal(k_c, (batch, height - 1, width - 1, outputs))
    index = compress(kernel_view(mask), mask.size)
    return forward_backward_steps(
        lambda x, k: kernel_patches(x, 2) @ kernel_view(jnp.where(mask, k, 0.0)),
        lambda x, k: sparse_conv(x, k, index), x, kernel, c)


def sac_workload(sparsity: float, compute_density: float | None, distribution: str = "erk"):
    settings = NetworkMethodSettings("static", sparsity, distribution, total_updates=1,
                                     compute_density=compute_density,
                                     compute_crossover=RunConfig.compute_crossover)
    network = build_network(settings)
    config = SACConfig(hidden_sizes=(400, 400, 400), batch_size=1280)
    sac = make_sac(config, TASKS, OBS_DIM, ACTION_DIM, network, network)
    k_init, k_batch, k_update = jax.random.split(jax.random.key(0), 3)
    state = jax.jit(sac.init)(k_init)
    batch, task_ids = random_batch(k_batch, config.batch_size, TASKS)
    update = jax.jit(sac.update, donate_argnums=0)
    return lambda s: update(s, batch, task_ids, k_update)[0], state


def ppo_workload(sparsity: float, compute: str, distribution: str = "erk"):
    base = get_preset("minigrid-mt3").config
    config = dataclasses.replace(base, method="static", sparsity=sparsity, compute=compute,
                                 distribution=distribution, progress=False)
    run = OnPolicyRun(config)
    run.start()
    run.iterate(EpisodeTracker(run.task_names, run.num_envs))  # a real rollout to train on
    rollout, key = run.rollout, jax.random.key(1)
    update = jax.jit(run.ppo.update, donate_argnums=0)
    state = run.state
    return lambda s: update(s, rollout, key)[0], state


def run_seconds(method: str, sparsity: float, compute: str) -> float:
    """Wall time of a whole ``minigrid-mt3`` run (``mtrl-sparse train`` in a fresh process)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "mtrl_sparse.cli", "train", "--preset", "minigrid-mt3",
                   "--method", method, "--sparsity", str(sparsity), "--compute", compute,
                   "--run-dir", f"{tmp}/run", "--no-progress"]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", choices=["layers", "sac", "ppo", "run"],
                        default=["layers", "sac", "ppo", "run"])
    parser.add_argument("--sparsities", nargs="+", type=float,
                        default=[0.8, 0.9, 0.95, 0.99, 0.999])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--distributions", nargs="+", choices=["erk", "uniform"], default=["erk"],
                        help="per-layer sparsity distributions of the sac and ppo sections' "
                             "static masks (ERK keeps small layers denser: under it the CNN's "
                             "convolutions stay above the crossover and compute densely)")
    args = parser.parse_args()
    if not kernels_available():
        raise SystemExit("the sparse-kernel extension is not built: nothing to compare")
    print(f"sparse kernels vs masked dense; jax {jax.__version__}, {os.cpu_count()} CPU cores, "
          f"{jax.devices()[0].platform}; dense/sparse time = speed-up (median of {args.rounds} "
          "alternating rounds)")
    print(f"CPU: {cpu_description()}")
    if "layers" in args.sections:
        print("\nlayers (forward + input and weight gradients), ms per call:")
        workloads = [(name, layer_workloads, shape) for name, shape in LAYERS.items()]
        workloads += [(name, conv_workloads, shape) for name, shape in CONVOLUTIONS.items()]
        for name, workload, shape in workloads:
            for sparsity in args.sparsities:
                dense, sparse = workload(*shape, sparsity)
                d, s, r = ratio_of(dense, sparse, args.rounds, calls=20)
                print(f"  {name:50s} {sparsity:6.1%}: dense {d * 1e3:7.2f} sparse "
                      f"{s * 1e3:7.2f}  {r:5.2f}x", flush=True)
    for distribution in args.distributions if "sac" in args.sections else ():
        print(f"\npaper-config SAC update (MT10, batch 1280, 3x400, static {distribution}), "
              "ms per update:")
        for sparsity in args.sparsities:
            d, s, r = ratio_of(sac_workload(sparsity, None, distribution),
                               sac_workload(sparsity, 1.0, distribution), args.rounds, calls=5)
            print(f"  {sparsity:6.1%}: dense {d * 1e3:8.1f} sparse {s * 1e3:8.1f}  {r:5.2f}x",
                  flush=True)
    for distribution in args.distributions if "ppo" in args.sections else ():
        print("\nun-pooled minigrid-mt3 PPO update (one rollout: 56 actor + 1 critic steps, "
              f"static {distribution}), ms per update:")
        for sparsity in args.sparsities:
            d, s, r = ratio_of(ppo_workload(sparsity, "dense", distribution),
                               ppo_workload(sparsity, "sparse", distribution),
                               args.rounds, calls=1)
            print(f"  {sparsity:6.1%}: dense {d * 1e3:8.1f} sparse {s * 1e3:8.1f}  {r:5.2f}x",
                  flush=True)
    if "run" in args.sections:
        print("\nwhole minigrid-mt3 runs, process start to exit, s:")
        dense = run_seconds("dense", 0.0, "dense")
        print(f"  dense method:                 {dense:7.1f}", flush=True)
        gmp_dense = run_seconds("gmp", 0.95, "dense")
        print(f"  GMP 95%, --compute dense:     {gmp_dense:7.1f}", flush=True)
        gmp_auto = run_seconds("gmp", 0.95, "auto")
        print(f"  GMP 95%, --compute auto:      {gmp_auto:7.1f}  ({dense / gmp_auto:.2f}x the "
              f"dense method's speed, {gmp_dense / gmp_auto:.2f}x GMP's computed densely)")


if __name__ == "__main__":
    reuse_freed_memory()  # as the CLI does: time what a run gets
    main()
