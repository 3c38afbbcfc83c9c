"""The JAX MiniGrid's frames are Farama's: the same bytes as Farama's ``rgb_array`` render of
the same state (tiles, the agent's triangle in each direction, the highlight of what it sees).

Tiles are compared one by one with Farama's ``Grid.render_tile`` for every object the seven tasks
hold (and the others Farama draws), each under the agent in every direction, highlighted or not;
whole frames with ``env.render()`` of Farama envs transplanted into ``GridState`` s
(``state_from_farama``) along random episodes of every task, so the highlight's occlusion by
walls and doors and DistShift's see-through-walls view are covered.
"""

from __future__ import annotations

import gymnasium as gym
import jax
import numpy as np
import pytest

from mtrl_sparse.envs import minigrid_jax as mj
from mtrl_sparse.envs import minigrid_render as mr

FARAMA = pytest.importorskip("minigrid", reason="needs Farama's minigrid (the farama extra)")

from minigrid.core.grid import Grid  # noqa: E402
from minigrid.core.world_object import WorldObj  # noqa: E402

TASKS = tuple(mj.TASK_RULES)

# (type, colour, state) of every object as Farama encodes it: goals are always green and lava
# always red (Farama's decode ignores their colour); doors open, closed and locked.
CELLS = [(mj.EMPTY, 0, 0), (mj.WALL, mj.GREY, 0), (mj.GOAL, mj.GREEN, 0), (mj.LAVA, mj.RED, 0),
         (mj.FLOOR, mj.BLUE, 0), (mj.BOX, mj.PURPLE, 0),
         *[(mj.DOOR, colour, state) for colour, state in
           ((mj.RED, mj.OPEN), (mj.BLUE, mj.CLOSED), (mj.YELLOW, mj.LOCKED),
            (mj.PURPLE, mj.CLOSED))],
         *[(kind, colour, 0) for kind in (mj.KEY, mj.BALL)
           for colour in (mj.RED, mj.GREEN, mj.BLUE, mj.PURPLE, mj.YELLOW, mj.GREY)]]


@pytest.mark.parametrize("cell", CELLS, ids=str)
def test_every_tile_is_farama_s(cell):
    obj = None if cell[0] == mj.EMPTY else WorldObj.decode(*cell)
    for agent_dir in (None, 0, 1, 2, 3):
        for highlight in (False, True):
            expected = Grid.render_tile(obj, agent_dir, highlight, mr.TILE_SIZE)
            assert np.array_equal(mr.tile(cell, agent_dir, highlight),
                                  expected.astype(np.uint8)), (agent_dir, highlight)


def _farama_frames(name: str, task: int, seed: int, steps: int):
    """Farama's frames and the transplanted states along a random episode of ``name`` (reset
    again whenever it ends), ``steps`` actions: (frames list, states list)."""
    env = gym.make(name, render_mode="rgb_array")
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    frames, states = [], []
    for _ in range(steps + 1):
        frames.append(env.render())
        states.append(mj.state_from_farama(env, task))
        _, _, terminated, truncated, _ = env.step(int(rng.integers(mj.NUM_ACTIONS)))
        if terminated or truncated:
            env.reset()
    return frames, states


@pytest.mark.parametrize("name", TASKS)
def test_frames_equal_farama_renders_of_the_same_states(name):
    task = TASKS.index(name)
    expected, states = _farama_frames(name, task, seed=task, steps=40)
    frames = mr.render_frames(jax.tree.map(lambda *xs: np.stack(xs), *states), TASKS)
    rules = mj.TASK_RULES[name]
    assert frames.shape == (41, rules.height * 32, rules.width * 32, 3)
    assert frames.dtype == np.uint8
    different = [t for t in range(len(expected)) if not np.array_equal(frames[t], expected[t])]
    assert different == []


def test_the_highlight_marks_the_cells_the_agent_sees():
    """Without the highlight a frame equals Farama's render with ``highlight=False``, and it
    differs from the highlighted frame exactly on the visible cells."""
    name = "MiniGrid-DoorKey-6x6-v0"
    env = gym.make(name, render_mode="rgb_array", highlight=False)
    env.reset(seed=3)
    farama_state = mj.state_from_farama(env, TASKS.index(name))
    state = jax.tree.map(lambda x: np.asarray(x)[None], farama_state)
    plain = mr.render_frames(state, TASKS, highlight=False)[0]
    assert np.array_equal(plain, env.render())
    lit = mr.render_frames(state, TASKS)[0]
    seen = np.asarray(mr.visible_cells(jax.tree.map(lambda x: x[0], state), np.bool_(False)))
    changed = (plain != lit).any(axis=-1).reshape(6, 32, 6, 32).any(axis=(1, 3)).T  # [x, y]
    assert seen[:6, :6].any() and not seen[:6, :6].all()
    assert np.array_equal(changed, seen[:6, :6])


def test_frames_of_several_tasks_are_refused():
    states = mj.GridState(grid=np.zeros((2, mj.GRID_SIZE, mj.GRID_SIZE, 3), np.uint8),
                          agent_pos=np.ones((2, 2), np.int32), agent_dir=np.zeros(2, np.int32),
                          carrying=np.zeros((2, 3), np.uint8), step_count=np.zeros(2, np.int32),
                          task=np.array([0, 1], np.int32), marks=np.zeros((2, 2, 2), np.int32))
    with pytest.raises(ValueError, match="one task"):
        mr.render_frames(states, TASKS)
