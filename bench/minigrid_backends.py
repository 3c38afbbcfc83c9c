"""Env steps per second of the JAX MiniGrid backend against Farama's, measured in one process.

Both step a task set's vector env with uniformly random actions, resets included (an env whose
episode ended draws a new task and layout before the next step):

- farama: ``MiniGridVectorEnv`` with the sync strategy (the faster on 2 cores), actions drawn on
  the host, one Python step per env;
- jax: ``GridVector`` as compiled code, ``--chunk`` vector steps per call (``lax.scan`` of
  step, reset of ended envs and the next random actions), as a compiled rollout runs them.

Prints env-steps/s of each backend and their ratio at every (task set, env count) pair
(target: jax at least 20x at equal env count on 2 cores). The two backends alternate, each timed
over at least ``--seconds``, and the figures are the better of two rounds.

Usage: python bench/minigrid_backends.py [--benchmarks MT3 MT7] [--envs 8 1024] [--seconds 3]
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from mtrl_sparse.envs.minigrid import MiniGridVectorEnv, minigrid_task_names
from mtrl_sparse.envs.minigrid_jax import NUM_ACTIONS
from mtrl_sparse.envs.minigrid_jax_vector import GridVector
from mtrl_sparse.host_memory import reuse_freed_memory


def farama_rate(env: MiniGridVectorEnv, rng: np.random.Generator, seconds: float) -> float:
    """Env steps per second of ``env`` under random actions over at least ``seconds``."""
    num_envs = env.spec.num_envs
    env.reset()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step = env.step(rng.integers(0, NUM_ACTIONS, num_envs))
        done = step.terminated | step.truncated
        if done.any():
            env.reset_done(done)
        steps += num_envs
    return steps / (time.perf_counter() - start)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _random_steps(core: GridVector, chunk: int, state, obs, key):
    """``chunk`` vector steps with random actions, resets included; returns the new carry and
    the rewards' sum (so nothing is optimised away)."""

    def one(carry, step_key):
        state, obs, total = carry
        actions = jax.random.randint(step_key, (core.num_envs,), 0, NUM_ACTIONS)
        state, result = core.step(state, actions)
        state, obs = core.reset_where(state, result.obs, result.terminated | result.truncated)
        return (state, obs, total + result.reward.sum()), None

    (state, obs, total), _ = jax.lax.scan(one, (state, obs, jnp.float32(0)),
                                          jax.random.split(key, chunk))
    return state, obs, total


def jax_rate(core: GridVector, chunk: int, seconds: float) -> float:
    """Env steps per second of the compiled JAX vector under random actions."""
    key = jax.random.PRNGKey(0)
    state, obs = jax.jit(core.init)(key)
    state, obs, total = jax.block_until_ready(_random_steps(core, chunk, state, obs, key))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        key = jax.random.fold_in(key, steps)
        state, obs, total = jax.block_until_ready(_random_steps(core, chunk, state, obs, key))
        steps += chunk * core.num_envs
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", nargs="+", default=["MT3", "MT7"])
    parser.add_argument("--envs", nargs="+", type=int, default=[8, 1024])
    parser.add_argument("--chunk", type=int, default=128, help="jax vector steps per call")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(f"random-action env steps/s, resets included; {jax.devices()[0].platform}, "
          f"jax chunks of {args.chunk} vector steps")
    print(f"{'tasks':6} {'envs':>5} {'farama':>10} {'jax':>12} {'jax/farama':>11}")
    for benchmark in args.benchmarks:
        for num_envs in args.envs:
            farama_env = MiniGridVectorEnv(benchmark, num_envs, seed=0)
            core = GridVector(minigrid_task_names(benchmark), num_envs)
            rng = np.random.default_rng(0)
            farama, fast = 0.0, 0.0
            for _ in range(2):
                farama = max(farama, farama_rate(farama_env, rng, args.seconds))
                fast = max(fast, jax_rate(core, args.chunk, args.seconds))
            farama_env.close()
            print(f"{benchmark:6} {num_envs:5d} {farama:10,.0f} {fast:12,.0f} "
                  f"{fast / farama:10.1f}x", flush=True)


if __name__ == "__main__":
    reuse_freed_memory()  # as the CLI does: time what a run gets
    main()
