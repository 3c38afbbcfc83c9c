"""Does the SAC training loop run at the speed of its update, whatever the replay buffer size?

Measured in one process, at the reference paper's configuration (Meta-World MT10: 10 tasks, one
env per task, observation size 39, action size 4; batch 1280; 3x400 trunks; twin critics; one
update per vector step):

- ``bare update``: the jitted ``sac.update`` with the SAC state donated, on one fixed batch, as
  ``bench/update_throughput.py`` times it: calls dispatched back to back, blocked on once.
- ``loop, buffer N``: the update phase of the training loop as the off-policy adapter drives it,
  per vector step: the learner's ``act`` on the current observations, the actions fetched to the
  host (``np.asarray``, as the adapter does before stepping its envs), then ``learn`` with that
  vector step's transitions (inserted into the replay buffer, then one update on a replay sample).
  Envs are not stepped: observations, rewards and next observations are random host arrays of the
  envs' shapes. The buffer of ``N`` transitions (the paper's 1M, and 20k) is filled with random
  transitions before timing, so that replay samples spread over all of it, as in a long run.
- ``act only`` (context): back-to-back ``act`` calls, the part of a loop step besides ``learn``.

Every workload is compiled and warmed up before timing; rounds interleave the workloads
(alternating their order), and a ratio is judged by the median over rounds of that round's ratio
(the two were measured seconds apart, under the same load). Target: loop rate / bare rate >= 0.95
for every buffer size. It also lists, from the compiled HLO of ``act`` and of ``learn``'s insert
and update steps, the copies of buffer-sized arrays (there should be none).

Usage: python bench/loop_vs_update.py [--rounds 5] [--repeats 16] [--capacities 1000000 20000]
(a few minutes on 2 cores; compilation included).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from mtrl_sparse.agents.replay_buffer import Transition
from mtrl_sparse.agents.sac import SAC, make_sac
from mtrl_sparse.config import SACTrainConfig
from mtrl_sparse.envs.base import MultiTaskEnvSpec
from mtrl_sparse.host_memory import reuse_freed_memory
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.sac_learner import Learner, SACTrainState, make_learner

NUM_TASKS, OBS_DIM, ACTION_DIM = 10, 39, 4
TARGET = 0.95  # loop update-phase rate / bare update rate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--repeats", type=int, default=16,
                        help="updates (loop: vector steps) per workload per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls after compiling")
    parser.add_argument("--capacities", type=int, nargs="+", default=[1_000_000, 20_000],
                        help="replay buffer sizes (transitions, all tasks) of the loop workloads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.rounds, args.repeats) < 1 or args.warmup < 0:
        parser.error("--rounds and --repeats must be >= 1, --warmup >= 0")
    return args


@dataclass
class Workload:
    """``run(n)`` does n calls (updates or vector steps) and returns seconds per call."""

    name: str
    run: Callable[[int], float]


def paper_sac(config: SACTrainConfig) -> SAC:
    """The paper config's SAC, its networks built from the config's methods as a run does."""
    networks = {name: build_network(settings, config.methods, name)
                for name, settings in config.network_methods().items()}
    return make_sac(config.sac, NUM_TASKS, OBS_DIM, ACTION_DIM, networks["actor"],
                    networks["critic"])


def random_transitions(rng: np.random.Generator, n: int) -> Transition:
    return Transition(
        obs=rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        actions=rng.uniform(-1.0, 1.0, (n, ACTION_DIM)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        next_obs=rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        terminated=np.zeros(n, np.float32),
    )


def bare_update(sac: SAC, config: SACTrainConfig, seed: int) -> Workload:
    """The donated ``sac.update`` on one fixed batch (as bench/update_throughput.py)."""
    k_init, k_update = jax.random.split(jax.random.key(seed))
    batch = jax.tree.map(jnp.asarray, random_transitions(np.random.default_rng(seed),
                                                         config.sac.batch_size))
    task_ids = jnp.repeat(jnp.arange(NUM_TASKS, dtype=jnp.int32),
                          config.sac.batch_size // NUM_TASKS)
    compiled = jax.jit(sac.update, donate_argnums=0).lower(
        jax.eval_shape(sac.init, k_init), batch, task_ids, k_update).compile()
    state = jax.jit(sac.init)(k_init)

    def run(calls: int) -> float:
        nonlocal state
        start = time.perf_counter()
        for _ in range(calls):
            state = compiled(state, batch, task_ids, k_update)[0]
        jax.block_until_ready(state)
        return (time.perf_counter() - start) / calls

    return Workload("bare update", run)


def full_buffer(state: SACTrainState, seed: int) -> SACTrainState:
    """``state`` with every ring full of random transitions (samples span the whole buffer)."""

    def fill(buffer):
        leaves, treedef = jax.tree.flatten(buffer.data)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        data = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype)
                                            for k, x in zip(keys, leaves, strict=True)])
        data = data.replace(terminated=jnp.zeros_like(data.terminated))
        return buffer.replace(data=data, size=jnp.asarray(data.rewards.shape[1], jnp.int32))

    return state.replace(buffer=jax.jit(fill, donate_argnums=0)(state.buffer))


def loop_learner(sac: SAC, config: SACTrainConfig, capacity: int) -> Learner:
    spec = MultiTaskEnvSpec(task_names=tuple(f"task{i}" for i in range(NUM_TASKS)),
                            obs_shape=(OBS_DIM,), action_dim=ACTION_DIM,
                            action_kind="continuous", envs_per_task=1, max_episode_steps=500)
    return make_learner(sac, spec, spec.env_task_ids, capacity, config.updates_per_vector_step,
                        config.plasticity)


def loop_workloads(sac: SAC, config: SACTrainConfig, capacity: int,
                   seed: int) -> tuple[Workload, Workload, SACTrainState, Learner]:
    """The loop's update phase (act, fetch actions, learn) and ``act`` alone, on one state."""
    learner = loop_learner(sac, config, capacity)
    rng = np.random.default_rng(seed)
    state = full_buffer(learner.init(seed), seed)
    obs = random_transitions(rng, NUM_TASKS).obs

    def step() -> None:
        nonlocal state, obs
        state, actions = learner.act(state, obs, False)
        actions = np.asarray(actions)
        new = random_transitions(rng, NUM_TASKS)
        transition = Transition(obs=obs, actions=actions, rewards=new.rewards,
                                next_obs=new.next_obs, terminated=new.terminated)
        state, _ = learner.learn(state, transition, False)
        obs = new.next_obs

    def run_loop(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            step()
        jax.block_until_ready(state)
        return (time.perf_counter() - start) / calls

    def run_act(calls: int) -> float:
        nonlocal state
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(calls):
            state, actions = learner.act(state, obs, False)
        jax.block_until_ready((state, actions))
        return (time.perf_counter() - start) / calls

    label = f"{capacity:,}"
    return (Workload(f"loop, buffer {label}", run_loop), Workload(f"act only, buffer {label}",
            run_act), state, learner)


def buffer_copies(learner: Learner, state: SACTrainState, capacity: int) -> dict[str, list[str]]:
    """Copies of buffer-sized arrays in the compiled HLO of act, insert and update."""
    obs = jnp.zeros((NUM_TASKS, OBS_DIM))
    new = jax.tree.map(jnp.asarray, random_transitions(np.random.default_rng(0), NUM_TASKS))
    steps = {
        "act": learner.act.lower(state, obs, False),
        "insert": learner.insert.lower(state.buffer, new, state.agent.phase),
        "update": learner.update.lower(state.agent, state.rng, state.first_nonfinite,
                                       state.buffer),
    }
    pattern = re.compile(rf"= \w+\[{NUM_TASKS},{capacity // NUM_TASKS}[,\]].*\bcopy(-start)?\(")
    return {name: [line.strip()[:120] for line in lowered.compile().as_text().splitlines()
                   if pattern.search(line)]
            for name, lowered in steps.items()}


def main() -> None:
    args = parse_args()
    config = SACTrainConfig()
    sac = paper_sac(config)
    print("SAC training loop's update phase versus the bare update (paper config, MT10)")
    print(f"  jax {jax.__version__}, backend {jax.default_backend()}; batch "
          f"{config.sac.batch_size}, hidden {'x'.join(map(str, config.sac.hidden_sizes))}, "
          f"{NUM_TASKS} tasks, {config.updates_per_vector_step} update per vector step")
    print(f"  timing: {args.warmup} warm-up calls, {args.rounds} interleaved rounds x "
          f"{args.repeats} calls per workload")

    start = time.perf_counter()
    bare = bare_update(sac, config, args.seed)
    workloads, acts, copies = [bare], [], {}
    for capacity in args.capacities:
        loop, act, state, learner = loop_workloads(sac, config, capacity, args.seed)
        copies[capacity] = buffer_copies(learner, state, capacity)
        workloads.append(loop)
        acts.append(act)
    for w in [*workloads, *acts]:  # compiles on the first call
        w.run(max(args.warmup, 1))
    print(f"  setup and compilation: {time.perf_counter() - start:.0f} s")

    times: dict[str, list[float]] = {w.name: [] for w in [*workloads, *acts]}
    for r in range(args.rounds):
        order = workloads if r % 2 == 0 else workloads[::-1]
        for w in order:
            times[w.name].append(w.run(args.repeats))
        for w in acts:
            times[w.name].append(w.run(args.repeats))

    print()
    print(f"{'workload':<28}{'median ms':>10}{'min-max ms':>16}{'calls/s':>9}")
    for name, t in times.items():
        median = statistics.median(t)
        spread = f"{min(t) * 1e3:.1f}-{max(t) * 1e3:.1f}"
        print(f"{name:<28}{median * 1e3:>10.1f}{spread:>16}{1 / median:>9.2f}")
    print("  (loop calls are vector steps: act, fetch the actions, learn = insert + 1 update)")

    print()
    print("Loop update-phase rate / bare update rate: median over rounds of the per-round ratio "
          "(ratio of medians, of minimums)")
    for w in workloads[1:]:
        paired = statistics.median(b / t for b, t in zip(times[bare.name], times[w.name],
                                                         strict=True))
        medians = statistics.median(times[bare.name]) / statistics.median(times[w.name])
        minimums = min(times[bare.name]) / min(times[w.name])
        verdict = "PASS" if paired >= TARGET else "FAIL"
        print(f"  {w.name:<26}{paired:>7.3f}  ({medians:.3f}, {minimums:.3f})  "
              f"target >= {TARGET}  {verdict}")

    print()
    print("Copies of buffer-sized arrays in the compiled steps (should be none):")
    for capacity, found in copies.items():
        summary = ", ".join(f"{name} {len(lines)}" for name, lines in found.items())
        print(f"  buffer {capacity:,}: {summary}")
        for name, lines in found.items():
            for line in lines:
                print(f"    {name}: {line}")


if __name__ == "__main__":
    reuse_freed_memory()  # as the CLI does: time what a run gets
    main()
