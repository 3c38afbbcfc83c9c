"""K runs vmapped in one program against the same K runs one after another: (a) the SAC update
phase of Meta-World runs, (b) MiniGrid PPO runs; each ratio measured in one process.

(a) SAC: the jitted learn step of a run (insert one vector step of transitions into the replay
buffer, then one gradient update on a replay batch) at the ``--preset``'s shapes (``mt10-paper``:
10 tasks, one env per task, observation size 39, action size 4, batch 1280, 3x400 trunks, twin
critics), GMP with the target sparsities ``--sparsities`` cycled over the runs, seeds 0..K-1.
Sequential is K calls of the runs' own learners' ``learn`` (``mtrl_sparse.sac_learner``), one per
run state; vmapped is one call of the group's learn (``mtrl_sparse.off_policy_group``) on the K
states stacked. Both take the vector step's transitions as host arrays, as the training loop
does. Each is compiled and warmed up first; then ``--rounds`` rounds time both alternately,
``--calls`` calls each (blocked on at the end); the table gives the median over rounds of the
seconds per call (sequential: all K runs) and the median over rounds of the rounds' ratio
sequential / vmapped. The replay buffer holds ``--buffer-capacity`` transitions (sampling cost
does not depend on it; the paper's 1M takes 336 MB per run state).

(b) PPO: ``bench/vmapped_runs.py`` (a MiniGrid run's compiled rollout and update, K sequential
against the K-run program), run in a subprocess with ``--ppo-preset`` and ``--ppo-repeats``.

Target: K = 8 vmapped at least 1.5x faster than K sequential on 2 cores. Figures only: nothing is
asserted, the script always exits 0.

On a CPU the runs are split over one XLA CPU device per core, as ``mtrl-sparse train`` splits a
vmapped group (``--one-device`` to measure one device); the sequential runs use one device, as a
run alone does.

Usage: python bench/sweep_groups.py [--ks 1 2 4 8] [--rounds 5] [--calls 3]
       [--buffer-capacity 100000] [--skip-ppo] [--ppo-repeats 3] [--one-device]
(defaults: a few minutes on 2 cores, compilation included).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# As `mtrl-sparse train` does for vmapped runs: one XLA CPU device per core, over which a group's
# run axis is sharded (set before JAX starts its backend); --one-device measures without.
if "--one-device" not in sys.argv:
    os.environ.setdefault("XLA_FLAGS",
                          f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mtrl_sparse.agents.replay_buffer import Transition  # noqa: E402
from mtrl_sparse.config import SACTrainConfig  # noqa: E402
from mtrl_sparse.envs.base import MultiTaskEnvSpec  # noqa: E402
from mtrl_sparse.envs.metaworld import metaworld_task_names  # noqa: E402
from mtrl_sparse.host_memory import reuse_freed_memory
from mtrl_sparse.off_policy import make_run_learner  # noqa: E402
from mtrl_sparse.off_policy_group import (  # noqa: E402
    make_group_learner,
    place_runs,
    place_train_states,
    stack_train_states,
)
from mtrl_sparse.on_policy_group import run_axis_sharding, run_slice  # noqa: E402
from mtrl_sparse.presets import get_preset  # noqa: E402
from mtrl_sparse.sac_learner import Learner, SACTrainState  # noqa: E402

OBS_DIM, ACTION_DIM = 39, 4  # Meta-World's observation and action sizes
TARGET = 1.5  # K = 8: sequential seconds / vmapped seconds, on 2 cores


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8], help="runs per group")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per workload per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
    parser.add_argument("--preset", default="mt10-paper", help="SAC preset (shapes, networks)")
    parser.add_argument("--buffer-capacity", type=int, default=100_000,
                        help="replay transitions per run (all tasks)")
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.8, 0.95],
                        help="GMP target sparsities, cycled over the runs")
    parser.add_argument("--skip-sac", action="store_true", help="only (b)")
    parser.add_argument("--skip-ppo", action="store_true", help="only (a)")
    parser.add_argument("--ppo-preset", default="minigrid-mt3")
    parser.add_argument("--ppo-repeats", type=int, default=3,
                        help="rounds of bench/vmapped_runs.py")
    parser.add_argument("--one-device", action="store_true",
                        help="one XLA CPU device for all runs (default: one per core)")
    args = parser.parse_args()
    if min(args.rounds, args.calls, *args.ks) < 1 or args.warmup < 0:
        parser.error("--ks, --rounds and --calls must be >= 1, --warmup >= 0")
    return args


def run_config(preset: str, capacity: int, sparsity: float, seed: int) -> SACTrainConfig:
    """The preset's SAC run with GMP at ``sparsity``, its buffer ``capacity`` transitions."""
    config = get_preset(preset).config
    return dataclasses.replace(config, method="gmp", sparsity=sparsity, seed=seed,
                               buffer_capacity=capacity)


def metaworld_spec(config: SACTrainConfig) -> MultiTaskEnvSpec:
    """The spec of the config's Meta-World training envs, without building them."""
    env = config.env
    return MultiTaskEnvSpec(task_names=metaworld_task_names(env.benchmark, env.task),
                            obs_shape=(OBS_DIM,), action_dim=ACTION_DIM,
                            action_kind="continuous", envs_per_task=env.envs_per_task,
                            max_episode_steps=env.max_episode_steps)


def random_transitions(rng: np.random.Generator, runs: int, num_envs: int) -> Transition:
    """A vector step of ``runs`` runs as host arrays: leaves (runs, num_envs, ...)."""
    shape = (runs, num_envs)
    return Transition(
        obs=rng.standard_normal((*shape, OBS_DIM), np.float32),
        actions=rng.uniform(-1, 1, (*shape, ACTION_DIM)).astype(np.float32),
        rewards=rng.uniform(0, 1, shape).astype(np.float32),
        next_obs=rng.standard_normal((*shape, OBS_DIM), np.float32),
        terminated=np.zeros(shape, np.float32))


def seconds_per_call(call: Callable[[], None], calls: int) -> float:
    """Mean wall time of ``calls`` calls of ``call`` (which blocks on its results)."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def sac_update_phase(args: argparse.Namespace) -> None:
    """(a): the table of K sequential learn calls against one vmapped call."""
    ks = sorted(set(args.ks))
    configs = [run_config(args.preset, args.buffer_capacity,
                          args.sparsities[k % len(args.sparsities)], seed=k)
               for k in range(max(ks))]
    spec = metaworld_spec(configs[0])
    learners: dict[float, Learner] = {}
    for config in configs:  # a run's own learner (one per target sparsity)
        learners.setdefault(config.sparsity, make_run_learner(config, spec, spec))
    run_learners = [learners[config.sparsity] for config in configs]
    states: list[SACTrainState] = [learner.init(config.seed)
                                   for learner, config in zip(run_learners, configs, strict=True)]
    rng = np.random.default_rng(0)
    for k, learner in enumerate(run_learners):  # a few vector steps of warm-up transitions
        for _ in range(4):
            states[k], _ = learner.learn(states[k], run_slice(
                random_transitions(rng, 1, spec.num_envs), 0), True)
    group_learner = make_group_learner(run_learners[0])
    sac = configs[0].sac
    print(f"(a) SAC update phase, {args.preset} shapes: batch {sac.batch_size}, "
          f"{'x'.join(map(str, sac.hidden_sizes))} trunks, {spec.num_tasks} tasks, "
          f"{spec.num_envs} envs per run; GMP {args.sparsities}; buffer {args.buffer_capacity:,}; "
          f"{os.cpu_count()} CPU cores, {len(jax.devices())} {jax.devices()[0].platform} "
          "devices (the run axis split over them when they divide K)")
    print(f"{'K':>3} {'sequential s':>12} {'vmapped s':>10} {'ratio':>7}", flush=True)
    for k in ks:
        sharding = run_axis_sharding(k)
        transitions = random_transitions(rng, k, spec.num_envs)
        singles = [run_slice(transitions, i) for i in range(k)]
        group = {"states": place_train_states(stack_train_states(states[:k]), sharding)}

        def sequential(k: int = k, singles: list[Transition] = singles) -> None:
            for i in range(k):
                states[i], _ = run_learners[i].learn(states[i], singles[i], False)
            jax.block_until_ready(states[:k])

        def vmapped(group: dict = group, transitions: Transition = transitions,
                    sharding=sharding) -> None:
            group["states"], _ = group_learner.learn(
                group["states"], place_runs(transitions, sharding), False)
            jax.block_until_ready(group["states"])

        for _ in range(1 + args.warmup):  # compile, then warm up
            sequential()
            vmapped()
        seq_times, vmap_times = [], []
        for round_index in range(args.rounds):  # alternating which goes first
            order = (sequential, vmapped) if round_index % 2 == 0 else (vmapped, sequential)
            times = {workload: seconds_per_call(workload, args.calls) for workload in order}
            seq_times.append(times[sequential])
            vmap_times.append(times[vmapped])
        ratio = statistics.median(s / v for s, v in zip(seq_times, vmap_times, strict=True))
        print(f"{k:3d} {statistics.median(seq_times):12.3f} "
              f"{statistics.median(vmap_times):10.3f} {ratio:6.2f}x", flush=True)
        del group
    print(f"target: K = 8 at least {TARGET}x on 2 cores")


def ppo_runs(args: argparse.Namespace) -> None:
    """(b): ``bench/vmapped_runs.py`` with this script's K values, in its own process."""
    print(f"\n(b) MiniGrid PPO runs (bench/vmapped_runs.py --preset {args.ppo_preset})",
          flush=True)
    command = [sys.executable, str(Path(__file__).with_name("vmapped_runs.py")),
               "--preset", args.ppo_preset, "--ks", *map(str, args.ks),
               "--repeats", str(args.ppo_repeats), *(["--one-device"] if args.one_device else [])]
    subprocess.run(command, check=False)
    print(f"target: K = 8 at least {TARGET}x on 2 cores")


def main() -> None:
    args = parse_args()
    if not args.skip_sac:
        sac_update_phase(args)
    if not args.skip_ppo:
        ppo_runs(args)


if __name__ == "__main__":
    reuse_freed_memory()  # as the CLI does: time what a run gets
    main()
