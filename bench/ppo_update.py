"""The multi-task PPO update against the machine's matmul rate: FLOPs, time, and where it goes.

Measured in one process, on a real rollout of the preset (``minigrid-mt3`` by default: the
un-pooled network of the reference paper; ``minigrid-quick``: the Quick start's pooled one):

1. FLOPs of one ``update`` (the critic's and the actor's minibatch steps on one rollout):
   (a) counted analytically, layer by layer (``layer_flops``; assumptions printed), and
   (b) by XLA's cost analysis of the compiled update. XLA counts the body of a loop once, and the
   actor's minibatch steps are one ``lax.scan``: its raw figure is about one actor step plus the
   critic's, so it is also printed corrected, ``raw + (steps - 1) x`` the cost analysis of one
   actor minibatch's loss and gradient compiled alone.
2. The dense update's time (median over rounds), the time of a float32 2048^3 matmul, and the
   update's achieved FLOP rate as a fraction of that matmul rate (the issue's target: >= 0.3).
3. Where one actor minibatch step's time goes, each part compiled and timed alone at the
   minibatch's shapes: the CNN trunk's forward and backward, the task heads' (the hidden layer of
   every task on every sample: ``T x U`` units, of which each sample reads its own ``U``), the
   loss and gradient of the whole network, and the optimizer step (global-norm clip, Adam,
   re-masking). The parts' shares are of the whole step; ``x steps`` gives the update.
4. With ``--trace DIR``: a JAX profiler trace of three updates (open with xprof or TensorBoard's
   profile plugin); if the ``xprof`` package is importable, also the HLO ops' time by kind
   (matrix products, elementwise loops, copies and concatenations), per update.

Every figure comes with the CPU model, its vector extensions and the core count.

Usage: python bench/ppo_update.py [--preset minigrid-mt3] [--rounds 7] [--trace DIR]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import re
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from update_throughput import cpu_description, xla_flops  # CPU line, XLA's FLOP count

from mtrl_sparse.agent_kind import EpisodeTracker
from mtrl_sparse.agents.cnn import MiniGridCNN
from mtrl_sparse.agents.net_state import apply_gradients, apply_masks
from mtrl_sparse.agents.optim import NetworkSetup, make_optimizer
from mtrl_sparse.agents.ppo import policy_loss, updates_per_rollout
from mtrl_sparse.host_memory import reuse_freed_memory
from mtrl_sparse.on_policy import OnPolicyRun
from mtrl_sparse.precision import use_training_precision
from mtrl_sparse.presets import get_preset

MATMUL_SIZE = 2048
FLOP_FRACTION_TARGET = 0.3

ASSUMPTIONS = (
    "matrix products only, 2*m*n*k each; biases, activations, softmax, Adam, masks not counted",
    "a 2x2 VALID convolution: 2 * positions * (4 * C_in) * C_out per sample",
    "the task heads' hidden layer computes every task's U units on every sample (T*U wide), the "
    "output layer reads the T*U units (zero outside the sample's own task)",
    "backward: 1x forward for the weight gradient, 1x for the input gradient, except no input "
    "gradient into the first convolution (the image)",
)


def layer_flops(config, num_tasks: int, obs_shape: tuple[int, ...], samples: int,
                out_dim: int) -> dict[str, int]:
    """Forward FLOPs per layer of one network on ``samples`` samples (see ``ASSUMPTIONS``)."""
    height, width, channels = obs_shape
    flops: dict[str, int] = {}
    for i, out_channels in enumerate(config.conv_channels):
        height, width = height - 1, width - 1
        flops[f"conv_{i}"] = 2 * samples * height * width * 4 * channels * out_channels
        channels = out_channels
        if i == 0 and config.cnn_pooling:
            height, width = height // 2, width // 2
    units = num_tasks * config.head_hidden_dim
    flops["head_hidden"] = 2 * samples * height * width * channels * units
    flops["heads"] = 2 * samples * units * out_dim
    return flops


def update_flops(config, num_tasks: int, num_actions: int, obs_shape: tuple[int, ...]
                 ) -> dict[str, int]:
    """Analytic FLOPs of one update, per network: (forward + both gradients) x its samples."""
    steps = updates_per_rollout(config)
    counts = {}
    for network, out_dim, batch in (("actor", num_actions, config.policy_batch_size),
                                    ("critic", 1, config.critic_batch_size)):
        forward = layer_flops(config, num_tasks, obs_shape, steps[network] * batch, out_dim)
        weight_grads = sum(forward.values())
        input_grads = weight_grads - forward["conv_0"]
        counts[network] = sum(forward.values()) + weight_grads + input_grads
    return counts


def median_seconds(fn: Callable[[], object], rounds: int, calls: int = 1) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def matmul_rate(rounds: int) -> float:
    """FLOP/s of a jitted float32 2048^3 matmul (the machine's practical large-matmul peak)."""
    a = jnp.ones((MATMUL_SIZE, MATMUL_SIZE), jnp.float32)
    dot = jax.jit(lambda a: a @ a)
    return 2 * MATMUL_SIZE ** 3 / median_seconds(lambda: dot(a), rounds)


def actor_loss(run: OnPolicyRun) -> tuple[Callable, dict]:
    """``(loss(params) -> scalar, params)``: the actor's PPO loss on the rollout's first minibatch
    (advantages drawn at random, standardised as in training), and the actor's parameters."""
    ppo, config, rollout = run.ppo, run.config.ppo, run.rollout
    batch = config.policy_batch_size
    obs = rollout.obs.reshape(-1, *rollout.obs.shape[2:])[:batch]
    task_ids = rollout.task_ids.reshape(-1)[:batch]
    actions = rollout.actions.reshape(-1)[:batch]
    log_probs = rollout.log_probs.reshape(-1)[:batch]
    advantages = jax.random.normal(jax.random.key(0), (batch,))

    def loss(params):
        logits = ppo.actor_logits({"params": params}, obs, task_ids)
        return policy_loss(logits, actions, log_probs, advantages, config.clip_eps,
                           config.entropy_coef, True)[0]

    return loss, ppo.acting_weights(run.state)["actor"]["params"]


def minibatch_parts(run: OnPolicyRun, rounds: int) -> dict[str, float]:
    """Seconds of one actor minibatch step's parts, each compiled and timed alone (the ``mh``
    architecture: one CNN ``trunk`` and the ``task_heads``)."""
    config = run.config.ppo
    loss, params = actor_loss(run)
    obs = run.rollout.obs.reshape(-1, *run.rollout.obs.shape[2:])[:config.policy_batch_size]

    cnn = MiniGridCNN(config.conv_channels, pooling=config.cnn_pooling)
    trunk_params, head_params = params["trunk"], params["task_heads"]
    cnn_out = cnn.apply({"params": trunk_params}, obs)

    def trunk_loss(trunk_params, obs):
        return jnp.sum(jnp.square(cnn.apply({"params": trunk_params}, obs)))

    def head_loss(head_params, features):  # the gradient reaches the features (the trunk)
        kernel, bias = head_params["head_hidden"]["kernel"], head_params["head_hidden"]["bias"]
        flat = features.reshape(features.shape[0], -1)  # as MaskedDense computes it
        hidden = jnp.tanh(flat @ kernel.reshape(flat.shape[1], -1) + bias)
        return jnp.sum(jnp.square(hidden))

    grad = jax.jit(jax.grad(loss))
    actor = run.state.actor
    tx = make_optimizer(config.actor_lr, config.max_grad_norm, NetworkSetup(method=None))

    def optimizer_step(actor, grads):  # what masked_gradient_step does after the gradient
        return apply_gradients(actor, apply_masks(grads, actor.masks), tx)

    grads = {"params": grad(params)}
    step = jax.jit(optimizer_step)
    trunk_grad = jax.jit(jax.grad(trunk_loss))  # no gradient into the image, as in training
    head_grad = jax.jit(jax.grad(head_loss, argnums=(0, 1)))
    return {
        "CNN trunk, forward + backward": median_seconds(lambda: trunk_grad(trunk_params, obs),
                                                        rounds, 10),
        "task heads' hidden layer (T x U units), forward + backward": median_seconds(
            lambda: head_grad(head_params, cnn_out), rounds, 10),
        "whole network: loss and gradient": median_seconds(lambda: grad(params), rounds, 10),
        "optimizer step (clip, Adam, masks)": median_seconds(
            lambda: step(actor, grads), rounds, 10),
    }


def op_kinds(trace_dir: str, updates: int) -> dict[str, float] | None:
    """Milliseconds per update by HLO op kind from a profiler trace (None without xprof)."""
    try:
        from xprof.convert import raw_to_tool_data
    except ImportError:
        return None
    path = sorted(glob.glob(f"{trace_dir}/plugins/profile/*/*.xplane.pb"))[-1]
    data, _ = raw_to_tool_data.xspace_to_tool_data([path], "trace_viewer", {})
    kinds: dict[str, float] = collections.Counter()
    for event in json.loads(data)["traceEvents"]:
        name = event.get("name", "")
        if (event.get("ph") != "X" or not re.match(r"[a-z_\-]+(\.\d+)?$", name)
                or name.startswith("while")):
            continue
        kind = ("matrix products" if name.startswith(("ynn_fusion", "dot", "xnn_fusion"))
                else "copies, transposes, concatenations"
                if re.match(r"(copy|transpose|concatenate)", name) else "elementwise loops")
        kinds[kind] += event.get("dur", 0) / 1e3 / updates
    return dict(kinds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="minigrid-mt3")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--trace", metavar="DIR", help="write a profiler trace of 3 updates")
    args = parser.parse_args()
    use_training_precision()
    config = dataclasses.replace(get_preset(args.preset).config, progress=False)
    run = OnPolicyRun(config)
    run.start()
    run.iterate(EpisodeTracker(run.task_names, run.num_envs))  # a real rollout to train on
    spec = run.env.spec
    ppo_config = config.ppo
    print(f"PPO update of {args.preset} (pooling {'on' if ppo_config.cnn_pooling else 'off'}, "
          f"{spec.num_tasks} tasks); jax {jax.__version__}, {jax.devices()[0].platform}; CPU: "
          f"{cpu_description()}")
    steps = updates_per_rollout(ppo_config)
    print(f"one update: {steps['actor']} actor minibatch steps of {ppo_config.policy_batch_size}"
          f", {steps['critic']} critic step(s) of {ppo_config.critic_batch_size}")

    analytic = update_flops(ppo_config, spec.num_tasks, spec.action_dim, spec.obs_shape)
    total = sum(analytic.values())
    key = jax.random.key(1)
    compiled = jax.jit(run.ppo.update).lower(run.state, run.rollout, key).compile()
    raw = xla_flops(compiled)
    loss, params = actor_loss(run)
    one_step = xla_flops(jax.jit(jax.grad(loss)).lower(params).compile())
    corrected = raw + (steps["actor"] - 1) * one_step
    print("\nFLOPs of one update:")
    for line in ASSUMPTIONS:
        print(f"  assumption: {line}")
    print(f"  analytic: {total / 1e9:.2f} GFLOP (actor {analytic['actor'] / 1e9:.2f}, critic "
          f"{analytic['critic'] / 1e9:.2f})")
    print(f"  XLA cost analysis: {raw / 1e9:.2f} GFLOP as reported (a loop's body counted once);"
          f" corrected for the {steps['actor']} actor steps: {corrected / 1e9:.2f} GFLOP")

    update_seconds = median_seconds(lambda: compiled(run.state, run.rollout, key), args.rounds)
    rate = matmul_rate(args.rounds)
    fraction = total / update_seconds / rate
    print(f"\ndense update: {update_seconds * 1e3:.1f} ms; 2048^3 matmul: {rate / 1e9:.1f} GFLOP/s;"
          f" update at {total / update_seconds / 1e9:.1f} GFLOP/s (analytic) = {fraction:.2f} of "
          f"the matmul rate (target >= {FLOP_FRACTION_TARGET}: "
          f"{'PASS' if fraction >= FLOP_FRACTION_TARGET else 'FAIL'})")

    parts = minibatch_parts(run, args.rounds)
    whole = parts["whole network: loss and gradient"] + parts["optimizer step (clip, Adam, masks)"]
    print(f"\none actor minibatch step's parts, each alone (x {steps['actor']} steps per update):")
    for name, seconds in parts.items():
        print(f"  {name:60s} {seconds * 1e3:7.2f} ms  {seconds / whole:5.0%} of the step")
    print(f"  {'loss, gradient and optimizer step x steps':60s} "
          f"{whole * steps['actor'] * 1e3:7.1f} ms  ({whole * steps['actor'] / update_seconds:.0%}"
          " of the update)")

    if args.trace:
        jax.block_until_ready(compiled(run.state, run.rollout, key))
        with jax.profiler.trace(args.trace):
            for _ in range(3):
                jax.block_until_ready(compiled(run.state, run.rollout, key))
        kinds = op_kinds(args.trace, 3)
        print(f"\nprofiler trace in {args.trace}")
        if kinds is None:
            print("  (install xprof for the time by op kind; or open the trace in TensorBoard)")
        else:
            for kind, ms in sorted(kinds.items(), key=lambda item: -item[1]):
                print(f"  {kind:40s} {ms:7.1f} ms per update")


if __name__ == "__main__":
    reuse_freed_memory()  # as the CLI does: time what a run gets
    main()
