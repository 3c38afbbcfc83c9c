"""MiniGrid task sets as a JAX vector env: pure functions for compiled runs, and a host adapter
with the project's ``MultiTaskVectorEnv`` interface (``base.py``).

``GridVector`` is the functional core. Its ``VectorState`` holds ``num_envs`` envs
(``minigrid_jax.GridState`` with a leading env axis), one PRNG key per env, and each episode's
shortest solution length. Every function is pure, so a rollout is a ``lax.scan`` over ``step`` and
``reset_where`` inside one compiled program, and many runs are a ``vmap`` of it:

- ``init(key)``: every env draws its first episode;
- ``step(state, actions)``: one step of every env (never resets), returning the true next
  observations, rewards and flags (``GridStep``);
- ``reset_where(state, obs, done)``: the envs where ``done`` draw a new episode (a task uniformly,
  then that task's layout, as the Farama backend does; or the vector's fixed task, see
  ``with_fixed_task``); the others keep their state and observation. Only the ended envs draw
  (a few slots at a time), so a step of a large vector costs little more than its dynamics.

Env ``w`` of a vector seeded ``seed`` draws its episodes from ``fold_in(PRNGKey(seed), w)``, so its
episodes depend on ``(seed, w)`` only, not on ``num_envs``. Layouts come from
``minigrid_jax_layouts`` (the same distributions as Farama's generators) and, with
``compute_optimal``, each episode's shortest solution from ``minigrid_jax_optimal`` (the same
numbers as the Farama search).

``JaxMiniGridVectorEnv`` wraps the core in the host interface of ``minigrid.MiniGridVectorEnv``
(numpy in, numpy out, explicit resets, random and full state snapshots), so every part of the
project that steps envs from the host runs on either backend. It costs one jitted call per vector
step; the compiled PPO run avoids even that.
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mtrl_sparse.envs import minigrid_jax as mj
from mtrl_sparse.envs.base import (
    MultiTaskEnvSpec,
    StepResult,
    checked_discrete_actions,
    checked_done,
)
from mtrl_sparse.envs.minigrid import (
    OBS_SHAPE,
    UNSOLVABLE,
    MiniGridHostEnv,
    minigrid_task_names,
)
from mtrl_sparse.envs.minigrid_jax_layouts import reset_state
from mtrl_sparse.envs.minigrid_jax_optimal import optimal_steps


@struct.dataclass
class VectorState:
    """``num_envs`` envs. ``envs``: ``GridState`` with a leading (num_envs,) axis; ``keys``:
    (num_envs,) PRNG keys of the envs' future episodes; ``optimal``: (num_envs,) int32 shortest
    solution of each current episode (``UNSOLVABLE`` if none, or when not computed);
    ``fixed_task``: () int32, the task of every new episode, or -1 to draw it uniformly (the
    multi-task protocol; a sequential schedule fixes it per phase)."""

    envs: mj.GridState
    keys: jax.Array
    optimal: jax.Array
    fixed_task: jax.Array


@struct.dataclass
class GridStep:
    """What ``GridVector.step`` returns (the fields of ``base.StepResult``, as a pytree): obs
    (num_envs, 7, 7, 3) uint8, reward float32, terminated / truncated / success bool, each
    (num_envs,)."""

    obs: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    success: jax.Array


@dataclass(frozen=True)
class GridVector:
    """A MiniGrid task set as pure vector-env functions (module docstring). Hashable, so it can
    be a static argument of ``jit``.

    Args:
        task_names: Farama env ids (keys of ``minigrid_jax.TASK_RULES``); a task id indexes them.
        num_envs: envs stepped together (>= 1).
        compute_optimal: compute each episode's shortest solution at its reset (evaluation).
    """

    task_names: tuple[str, ...]
    num_envs: int
    compute_optimal: bool = False

    @functools.cached_property
    def tables(self) -> mj.TaskTables:
        return mj.task_tables(self.task_names)

    @property
    def spec(self) -> MultiTaskEnvSpec:
        max_steps = tuple(int(m) for m in self.tables.max_steps)
        return MultiTaskEnvSpec(
            task_names=self.task_names, obs_shape=OBS_SHAPE, action_dim=mj.NUM_ACTIONS,
            action_kind="discrete", envs_per_task=0, max_episode_steps=max(max_steps),
            task_sampling="per_episode", workers=self.num_envs, max_steps_per_task=max_steps)

    def _episode(self, key: jax.Array, task: jax.Array) -> tuple[mj.GridState, jax.Array]:
        """One env's fresh episode of ``task`` from ``key``: (state, shortest solution length, or
        ``UNSOLVABLE`` when not computed)."""
        env = reset_state(self.task_names, key, task)
        optimal = (optimal_steps(self.tables, env) if self.compute_optimal
                   else jnp.int32(UNSOLVABLE))
        return env, optimal

    def _new_episode(self, key: jax.Array, fixed_task: jax.Array
                     ) -> tuple[mj.GridState, jax.Array, jax.Array]:
        """One env's next episode from its key: (state, next key, optimal steps); its task is
        drawn uniformly, or is ``fixed_task`` when that is >= 0 (the key is split the same way
        either way)."""
        key, task_key, layout_key = jax.random.split(key, 3)
        drawn = jax.random.randint(task_key, (), 0, len(self.task_names), dtype=jnp.int32)
        task = jnp.where(fixed_task >= 0, fixed_task, drawn)
        env, optimal = self._episode(layout_key, task)
        return env, key, optimal

    def episodes_of(self, key: jax.Array, tasks: jax.Array) -> tuple[mj.GridState, jax.Array]:
        """Fresh episodes of the given ``tasks`` ((num_envs,) int32), env ``w``'s layout drawn from
        ``fold_in(key, w)``: (envs, shortest solution lengths or ``UNSOLVABLE``). For evaluation
        protocols that fix the tasks of their episodes."""
        return jax.vmap(self._episode)(self.env_keys(key), tasks)

    def observe(self, envs: mj.GridState) -> jax.Array:
        """Observations of ``envs`` (a batch), (num_envs, 7, 7, 3) uint8."""
        see_through = jnp.asarray(self.tables.see_through_walls)
        return jax.vmap(lambda env: mj.observe(env, see_through[env.task]))(envs)

    def env_keys(self, key: jax.Array) -> jax.Array:
        """The (num_envs,) keys of env ``w``'s episodes: ``fold_in(key, w)``."""
        return jax.vmap(lambda w: jax.random.fold_in(key, w))(jnp.arange(self.num_envs))

    def init(self, key: jax.Array) -> tuple[VectorState, jax.Array]:
        """Every env's first episode from the vector's key; returns (state, obs uint8)."""
        return self.reset_where(*self.blank(key), jnp.ones(self.num_envs, dtype=bool))

    def blank(self, key: jax.Array) -> tuple[VectorState, jax.Array]:
        """Zero-filled envs with the episode keys of ``key`` and zero observations: the arrays
        of a vector before its first reset (no episode drawn; nothing to compile)."""
        keys = self.env_keys(key)
        fixed_task = jnp.int32(-1)
        envs, _, optimal = jax.tree.map(
            lambda leaf: jnp.zeros(leaf.shape, leaf.dtype),
            jax.eval_shape(jax.vmap(self._new_episode, in_axes=(0, None)), keys, fixed_task))
        obs = jnp.zeros((self.num_envs, *OBS_SHAPE), dtype=jnp.uint8)
        return VectorState(envs=envs, keys=keys, optimal=optimal, fixed_task=fixed_task), obs

    def with_fixed_task(self, state: VectorState, obs: jax.Array, task: jax.Array
                        ) -> tuple[VectorState, jax.Array]:
        """Every env starts a new episode of ``task`` (() int32; -1: tasks drawn uniformly
        again), and so do all later episodes: a task boundary of a sequential schedule. Returns
        the state and the new observations (uint8)."""
        state = state.replace(fixed_task=jnp.asarray(task, jnp.int32))
        return self.reset_where(state, obs, jnp.ones(self.num_envs, dtype=bool))

    def step(self, state: VectorState, actions: jax.Array) -> tuple[VectorState, GridStep]:
        """One step of every env with ``actions`` ((num_envs,) int in [0, 7)); never resets.
        The result's ``obs`` is uint8 (num_envs, 7, 7, 3); reward float32."""
        envs, reward, terminated, truncated = jax.vmap(
            lambda env, action: mj.step(self.tables, env, action))(state.envs, actions)
        result = GridStep(obs=self.observe(envs), reward=reward, terminated=terminated,
                          truncated=truncated, success=terminated & (reward > 0))
        return state.replace(envs=envs), result

    @property
    def reset_slots(self) -> int:
        """Episodes ``reset_where`` draws per pass: a step ends few episodes of a large vector,
        so new episodes are drawn for the ended envs only, this many at a time."""
        return min(self.num_envs, max(8, self.num_envs // 16))

    def reset_where(self, state: VectorState, obs: jax.Array, done: jax.Array
                    ) -> tuple[VectorState, jax.Array]:
        """New episodes for the envs where ``done`` ((num_envs,) bool); returns the state and the
        observations, ``obs`` kept where not done.

        The ended envs are gathered into ``reset_slots`` slots per pass (a ``while_loop`` that
        makes no pass when nothing ended); an env's new episode depends only on its own key, so
        the result does not depend on the slot count.
        """
        slots, n = self.reset_slots, self.num_envs

        def draw(carry):
            state, obs, pending = carry
            index = jnp.nonzero(pending, size=slots, fill_value=0)[0]
            target = jnp.where(jnp.arange(slots) < pending.sum(), index, n)  # n: dropped
            fresh, keys, optimal = jax.vmap(self._new_episode, in_axes=(0, None))(
                state.keys[index], state.fixed_task)

            def put(old, new):
                return old.at[target].set(new, mode="drop")

            state = state.replace(envs=jax.tree.map(put, state.envs, fresh),
                                  keys=put(state.keys, keys), optimal=put(state.optimal, optimal))
            return state, put(obs, self.observe(fresh)), put(pending, False)

        state, obs, _ = jax.lax.while_loop(lambda carry: carry[2].any(), draw,
                                           (state, obs, done))
        return state, obs


class JaxMiniGridVectorEnv(MiniGridHostEnv):
    """The JAX backend behind the host interface of ``minigrid.MiniGridVectorEnv`` (same
    arguments but ``vector_strategy``; same arrays and semantics)."""

    def __init__(self, benchmark: str, num_envs: int, seed: int = 0, *,
                 task: str | None = None, compute_optimal: bool = False) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.core = GridVector(minigrid_task_names(benchmark, task), num_envs, compute_optimal)
        self.spec = self.core.spec
        self.compute_optimal = compute_optimal
        self._step = jax.jit(self.core.step)
        self._reset_where = jax.jit(self.core.reset_where)
        self._with_fixed_task = jax.jit(self.core.with_fixed_task)
        # No episode before the first reset, which draws from the envs' initial keys.
        self._state, self._obs = self.core.blank(jax.random.PRNGKey(seed))
        self._ended = np.ones(num_envs, dtype=np.bool_)

    def reset_done(self, done: np.ndarray) -> np.ndarray:
        """Reset the envs where ``done`` (bool, (num_envs,)); each draws a new task. Returns all
        observations (num_envs, 7, 7, 3) float32, where only the reset rows changed."""
        done = checked_done(done, self.spec.num_envs)
        if done.any():
            self._state, self._obs = self._reset_where(self._state, self._obs, jnp.asarray(done))
            self._ended &= ~done
        return np.asarray(self._obs, dtype=np.float32)

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every env with ``actions`` ((num_envs,) integers in [0, 7)); never resets.

        Raises:
            ValueError: actions of the wrong shape, type or range.
            RuntimeError: an env's episode has ended and it was not reset.
        """
        actions = checked_discrete_actions(actions, self.spec.num_envs, mj.NUM_ACTIONS)
        if self._ended.any():
            raise RuntimeError(f"envs {np.flatnonzero(self._ended).tolist()} must be reset "
                               "(reset / reset_done) before they are stepped")
        self._state, result = self._step(self._state, jnp.asarray(actions, dtype=jnp.int32))
        self._obs = result.obs
        out = jax.device_get(result)
        self._ended = out.terminated | out.truncated
        return StepResult(obs=out.obs.astype(np.float32), reward=out.reward,
                          terminated=out.terminated, truncated=out.truncated,
                          success=out.success)

    def current_task_ids(self) -> np.ndarray:
        """Task id of every env's current episode, (num_envs,) int32."""
        return np.asarray(self._state.envs.task)

    def fix_task(self, task: int) -> np.ndarray:
        """Every env starts a new episode of ``task`` now, and every later episode is of it too
        (-1: back to drawing tasks uniformly); a task boundary of a sequential schedule. Returns
        the observations (num_envs, 7, 7, 3) float32."""
        if not -1 <= task < self.spec.num_tasks:
            raise ValueError(f"task {task} is not a task id of this vector (0.."
                             f"{self.spec.num_tasks - 1}, or -1 for uniform draws)")
        self._state, self._obs = self._with_fixed_task(self._state, self._obs, task)
        self._ended[:] = False
        return np.asarray(self._obs, dtype=np.float32)

    def fixed_task(self) -> int:
        """The task of every new episode, or -1 when tasks are drawn uniformly."""
        return int(self._state.fixed_task)

    def episode_optimal_steps(self) -> np.ndarray:
        """Shortest solution length of every env's current episode, (num_envs,) int32.

        Raises:
            RuntimeError: the env was built without ``compute_optimal``.
        """
        if not self.compute_optimal:
            raise RuntimeError("episode_optimal_steps needs an env built with "
                               "compute_optimal=True")
        return np.asarray(self._state.optimal)

    def get_rng_state(self) -> dict[str, Any]:
        """JSON-serialisable: every env's PRNG key (which decides all its future episodes)."""
        return {"keys": np.asarray(self._state.keys).tolist()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore a ``get_rng_state`` snapshot; the next resets reproduce the episodes that
        followed it."""
        keys = np.asarray(state["keys"], dtype=np.uint32)
        if keys.shape[0] != self.spec.num_envs:
            raise ValueError(f"RNG state has {keys.shape[0]} envs, this env {self.spec.num_envs}")
        self._state = self._state.replace(keys=jnp.asarray(keys))

    def get_state(self) -> bytes:
        """A snapshot of the whole vector (episodes in progress included) as bytes."""
        return pickle.dumps({"state": jax.device_get(self._state),
                             "obs": np.asarray(self._obs), "ended": self._ended.copy()})

    def set_state(self, state: bytes) -> np.ndarray:
        """Restore a ``get_state`` snapshot; returns the current observations (as ``reset``)."""
        snapshot = pickle.loads(state)
        restored = snapshot["state"]
        if restored.keys.shape[0] != self.spec.num_envs:
            raise ValueError(f"env state has {restored.keys.shape[0]} envs, this env "
                             f"{self.spec.num_envs}")
        self._state = jax.tree.map(jnp.asarray, restored)
        self._obs = jnp.asarray(snapshot["obs"])
        self._ended = snapshot["ended"].copy()
        return np.asarray(self._obs, dtype=np.float32)

    def device_state(self) -> tuple[VectorState, jax.Array]:
        """The envs' state and current observations (uint8) as device arrays, for compiled code
        that steps them (``GridVector``); hand them back with ``set_device_state``."""
        if self._ended.any():
            raise RuntimeError("every env must have an episode (call reset) before compiled "
                               "code steps them")
        return self._state, self._obs

    def set_device_state(self, state: VectorState, obs: jax.Array) -> None:
        """Take back the state compiled code left, every env in an episode (as ``reset_where``
        leaves them)."""
        self._state, self._obs = state, obs
        self._ended[:] = False

    def close(self) -> None:
        """Nothing to release (no processes)."""
