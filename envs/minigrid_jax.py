"""MiniGrid's dynamics as pure JAX functions: the state of one env, its step and its observation.

A re-implementation of the rules of Farama's ``minigrid`` (Chevalier-Boisvert et al., 2023,
"Minigrid & Miniworld", arXiv 2306.13831) for the seven tasks of the reference paper's MiniGrid
task sets (``TASK_RULES``), written so that one env is a small pytree of arrays and a step is a
jit- and vmap-able function. Layouts (``reset``) live in ``minigrid_jax_layouts.py``, shortest
solutions in ``minigrid_jax_optimal.py``; ``minigrid_jax_vector.py`` puts them behind the
project's multi-task vector env interface. The tests transplant Farama states into this
representation (``state_from_farama``) and check that both backends then produce identical
observations, rewards and flags.

Representation. A grid is Farama's full encoding ``Grid.encode()``: cell ``(x, y)`` holds
``(object type, colour, state)`` indices (``OBJECT_TO_IDX``, ``COLOR_TO_IDX``, door state open 0 /
closed 1 / locked 2), an empty cell ``(1, 0, 0)``. Every task's grid sits in the top-left corner of
one ``GRID_SIZE`` x ``GRID_SIZE`` array whose other cells are walls: Farama shows a wall for every
cell outside its grid, so the padding is invisible. The agent is not in the grid; it has a
position, a direction (0 +x, 1 +y, 2 -x, 3 -y) and the encoding of what it carries (all zeros for
nothing).

Rules. The actions are Farama's (left, right, forward, pickup, drop, toggle, done) with their
effects: forward moves onto empty cells, goals, lava, floor and open doors; reaching a goal ends
the episode with reward ``1 - 0.9 * step_count / max_steps``; lava ends it with 0; pickup takes a
key, ball or box in front when the hands are empty; drop puts the carried object on an empty cell
in front; toggle opens or closes a door, and opens a locked one when carrying a key of its colour.
Task-specific rules: in RedBlueDoors opening the blue door ends the episode, with the reward if
the red door was open before that step and 0 otherwise, and opening the red door while the blue
one is open ends it with 0; in Memory pickup acts as toggle, and standing next to the matching
(unmatching) object at the end of the hallway ends the episode with the reward (with 0). The time
limit truncates at ``step_count >= max_steps``. Boxes (which can hold objects) appear in none of
the seven tasks and are not supported: toggling a box does nothing here.

Rewards are looked up in a float32 table computed in float64 from Farama's formula, so they equal
the Farama backend's rewards (float64 cast to float32) bit for bit.

Observation. Farama's egocentric 7x7 view, ``(7, 7, 3)`` uint8 indexed ``[vx, vy]``: the agent at
``(3, 6)`` looks towards ``vy = 0``. Without ``see_through_walls`` (all tasks but DistShift) cells
hidden behind walls and closed doors are zeros, by Farama's row-by-row visibility propagation
(``Grid.process_vis``); the agent's own cell shows what it carries (or an empty cell).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

GRID_SIZE = 25  # the largest task grid (MultiRoom's 25 x 25); every grid is padded to it
VIEW_SIZE = 7  # Farama's default agent_view_size

# Farama's encoding indices (minigrid.core.constants).
UNSEEN, EMPTY, WALL, FLOOR, DOOR, KEY, BALL, BOX, GOAL, LAVA = range(10)
RED, GREEN, BLUE, PURPLE, YELLOW, GREY = range(6)
OPEN, CLOSED, LOCKED = range(3)
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
NUM_ACTIONS = 7

EMPTY_CELL = (EMPTY, 0, 0)
WALL_CELL = (WALL, GREY, 0)
NOTHING = (0, 0, 0)  # what ``carrying`` holds when the hands are empty

# Direction vectors (dx, dy) of directions 0..3, as Farama's DIR_TO_VEC.
DIR_VEC = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int32)

# Rules beyond the common ones, per task.
RULE_GOAL, RULE_RED_BLUE_DOORS, RULE_MEMORY = range(3)


@dataclass(frozen=True)
class TaskRules:
    """What the dynamics of one Farama task need: its grid size, time limit, visibility and rule."""

    width: int
    height: int
    max_steps: int
    see_through_walls: bool
    rule: int


# The registered defaults of the seven Farama env ids (minigrid 3.x).
TASK_RULES: dict[str, TaskRules] = {
    "MiniGrid-LavaGapS7-v0": TaskRules(7, 7, 196, False, RULE_GOAL),
    "MiniGrid-RedBlueDoors-6x6-v0": TaskRules(12, 6, 720, False, RULE_RED_BLUE_DOORS),
    "MiniGrid-MemoryS11-v0": TaskRules(11, 11, 605, False, RULE_MEMORY),
    "MiniGrid-DoorKey-6x6-v0": TaskRules(6, 6, 360, False, RULE_GOAL),
    "MiniGrid-DistShift1-v0": TaskRules(9, 7, 252, True, RULE_GOAL),
    "MiniGrid-SimpleCrossingS9N2-v0": TaskRules(9, 9, 324, False, RULE_GOAL),
    "MiniGrid-MultiRoom-N2-S4-v0": TaskRules(25, 25, 40, False, RULE_GOAL),
}


@struct.dataclass
class GridState:
    """One env. Shapes are per env; a vector of envs adds a leading axis to every field.

    Attributes:
        grid: (GRID_SIZE, GRID_SIZE, 3) uint8, cell ``(x, y)`` as Farama's encoding (module doc).
        agent_pos: (2,) int32, ``(x, y)``.
        agent_dir: () int32 in [0, 4).
        carrying: (3,) uint8, the carried object's encoding, zeros for nothing.
        step_count: () int32, steps taken in this episode.
        task: () int32, index of the episode's task in the env's ``task_names``.
        marks: (2, 2) int32, task-specific positions ``(x, y)``: RedBlueDoors the red and the blue
            door, Memory the success and the failure cell; -1 otherwise.
    """

    grid: jax.Array
    agent_pos: jax.Array
    agent_dir: jax.Array
    carrying: jax.Array
    step_count: jax.Array
    task: jax.Array
    marks: jax.Array


@dataclass(frozen=True)
class TaskTables:
    """Per-task constants of a task set, indexed by task id (numpy; constants under ``jit``).

    Attributes:
        max_steps: (num_tasks,) int32.
        see_through_walls: (num_tasks,) bool.
        rule: (num_tasks,) int32, a ``RULE_*``.
        reward: (num_tasks, max(max_steps) + 1) float32, ``reward[t, s]`` is the success reward
            after ``s`` steps, ``1 - 0.9 * (s / max_steps[t])`` computed in float64.
    """

    max_steps: np.ndarray
    see_through_walls: np.ndarray
    rule: np.ndarray
    reward: np.ndarray


def task_tables(task_names: Sequence[str]) -> TaskTables:
    """The ``TaskTables`` of ``task_names`` (Farama env ids, keys of ``TASK_RULES``).

    Raises:
        ValueError: a task without a JAX implementation (the message lists those with one).
    """
    unknown = [name for name in task_names if name not in TASK_RULES]
    if unknown:
        raise ValueError(f"no JAX MiniGrid implementation of {unknown}; available: "
                         f"{tuple(TASK_RULES)}")
    rules = [TASK_RULES[name] for name in task_names]
    max_steps = np.array([r.max_steps for r in rules], dtype=np.int32)
    steps = np.arange(max_steps.max() + 1, dtype=np.float64)
    reward = np.stack([1 - 0.9 * (steps / m) for m in max_steps.astype(np.float64)])
    return TaskTables(
        max_steps=max_steps,
        see_through_walls=np.array([r.see_through_walls for r in rules], dtype=np.bool_),
        rule=np.array([r.rule for r in rules], dtype=np.int32),
        reward=reward.astype(np.float32),
    )


def passable(cell: jax.Array) -> jax.Array:
    """Farama's ``can_overlap`` of encoded cells (..., 3) (an empty cell counts as passable)."""
    kind = cell[..., 0]
    return ((kind == EMPTY) | (kind == GOAL) | (kind == LAVA) | (kind == FLOOR)
            | ((kind == DOOR) & (cell[..., 2] == OPEN)))


def _transparent(cell: jax.Array) -> jax.Array:
    """Farama's ``see_behind`` of encoded cells (..., 3): false for walls and shut doors."""
    kind = cell[..., 0]
    return (kind != WALL) & ~((kind == DOOR) & (cell[..., 2] != OPEN))


def _row_visibility_table() -> np.ndarray:
    """One row of Farama's ``Grid.process_vis`` for every input, as a lookup table.

    Index ``seed * 2**VIEW_SIZE + see``: bit ``k`` of ``seed`` says cell ``vx = k`` of the row
    was made visible by the previous row, bit ``k`` of ``see`` that the cell is transparent.
    Entry: ``row | next_seed << VIEW_SIZE``, the row's visibility after Farama's rightward then
    leftward pass, and the cells it makes visible in the next row (farther from the agent).
    Built by running Farama's two loops, vectorised over all inputs.
    """
    n = VIEW_SIZE
    index = np.arange(1 << (2 * n))
    seed, see = index >> n, index & ((1 << n) - 1)
    row = [(seed >> k) & 1 == 1 for k in range(n)]
    transparent = [(see >> k) & 1 == 1 for k in range(n)]
    below = [np.zeros_like(row[0]) for _ in range(n)]
    for i in range(n - 1):  # rightward pass
        spread = row[i] & transparent[i]
        row[i + 1] = row[i + 1] | spread
        below[i + 1] |= spread
        below[i] |= spread
    for i in reversed(range(1, n)):  # leftward pass
        spread = row[i] & transparent[i]
        row[i - 1] = row[i - 1] | spread
        below[i - 1] |= spread
        below[i] |= spread
    packed = sum(row[k].astype(np.int32) << k for k in range(n))
    packed_below = sum(below[k].astype(np.int32) << k for k in range(n))
    return (packed | packed_below << n).astype(np.int32)


_ROW_VISIBILITY = _row_visibility_table()


def _visibility(transparent: jax.Array) -> jax.Array:
    """Farama's ``Grid.process_vis`` for the agent at ``(VIEW_SIZE // 2, VIEW_SIZE - 1)``.

    ``transparent``: (VIEW_SIZE, VIEW_SIZE) bool indexed ``[vx, vy]``. Returns the visibility mask
    of the same shape. Rows are processed from the agent's row away from it, each by one lookup
    in ``_ROW_VISIBILITY`` (bit-packed rows), which keeps the compiled program to a few dozen
    operations.
    """
    n = VIEW_SIZE
    bits = jnp.left_shift(1, jnp.arange(n, dtype=jnp.int32))
    see = (transparent.astype(jnp.int32) * bits[:, None]).sum(axis=0)  # (vy,) packed over vx
    table = jnp.asarray(_ROW_VISIBILITY)
    seed = jnp.int32(1 << (n // 2))
    rows = [None] * n
    for vy in reversed(range(n)):
        entry = table[seed * (1 << n) + see[vy]]
        rows[vy] = entry & ((1 << n) - 1)
        seed = entry >> n
    packed = jnp.stack(rows)  # (vy,)
    return (packed[None, :] & bits[:, None]) != 0


def view_positions(agent_pos: jax.Array, agent_dir: jax.Array) -> jax.Array:
    """Absolute ``(x, y)`` of every view cell, (VIEW_SIZE, VIEW_SIZE, 2) int32 indexed ``[vx, vy]``:
    ``agent + (vx - 3) * right + (6 - vy) * forward`` (Farama's ``get_view_coords`` inverted)."""
    forward = jnp.asarray(DIR_VEC)[agent_dir]
    right = jnp.stack([-forward[1], forward[0]])
    offsets = jnp.arange(VIEW_SIZE)
    across = (offsets - VIEW_SIZE // 2)[:, None, None] * right  # (vx, 1, 2)
    ahead = (VIEW_SIZE - 1 - offsets)[None, :, None] * forward  # (1, vy, 2)
    return agent_pos + across + ahead


def _view_cells(state: GridState) -> tuple[jax.Array, jax.Array]:
    """The view's absolute positions (VIEW_SIZE, VIEW_SIZE, 2) int32 and its cells
    (VIEW_SIZE, VIEW_SIZE, 3) uint8 (walls outside the grid), both indexed ``[vx, vy]``."""
    pos = view_positions(state.agent_pos, state.agent_dir)
    inside = ((pos >= 0) & (pos < GRID_SIZE)).all(axis=-1)
    clipped = jnp.clip(pos, 0, GRID_SIZE - 1)
    cells = state.grid[clipped[..., 0], clipped[..., 1]]
    return pos, jnp.where(inside[..., None], cells, jnp.asarray(WALL_CELL, dtype=jnp.uint8))


def visible_view(state: GridState, see_through_walls: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Which cells of the view the agent sees: ``(positions, visible)``, the view's absolute
    ``(x, y)`` (VIEW_SIZE, VIEW_SIZE, 2) int32 and (VIEW_SIZE, VIEW_SIZE) bool, indexed
    ``[vx, vy]`` (Farama's ``gen_obs_grid`` visibility mask; all true with
    ``see_through_walls``)."""
    pos, cells = _view_cells(state)
    return pos, _visibility(_transparent(cells)) | see_through_walls


def observe(state: GridState, see_through_walls: jax.Array) -> jax.Array:
    """The agent's egocentric view, (VIEW_SIZE, VIEW_SIZE, 3) uint8 (Farama's ``image``)."""
    _, cells = _view_cells(state)
    visible = _visibility(_transparent(cells)) | see_through_walls
    view = jnp.where(visible[..., None], cells, jnp.uint8(0))
    held = jnp.where(state.carrying[0] == 0, jnp.asarray(EMPTY_CELL, dtype=jnp.uint8),
                     state.carrying)
    return view.at[VIEW_SIZE // 2, VIEW_SIZE - 1].set(held)


def step(tables: TaskTables, state: GridState, action: jax.Array
         ) -> tuple[GridState, jax.Array, jax.Array, jax.Array]:
    """One Farama step of one env (no observation; see ``observe``).

    Args:
        tables: the task set's constants.
        state: the env before the step.
        action: () integer in [0, NUM_ACTIONS).

    Returns:
        ``(state, reward, terminated, truncated)``: reward () float32, flags () bool.
    """
    rule = jnp.asarray(tables.rule)[state.task]
    max_steps = jnp.asarray(tables.max_steps)[state.task]
    action = jnp.where((rule == RULE_MEMORY) & (action == PICKUP), TOGGLE, action)

    front = state.agent_pos + jnp.asarray(DIR_VEC)[state.agent_dir]
    cell = state.grid[front[0], front[1]]
    kind, colour, door = cell[0], cell[1], cell[2]
    hands_empty = state.carrying[0] == 0

    turn = jnp.where(action == LEFT, 3, jnp.where(action == RIGHT, 1, 0))
    agent_dir = (state.agent_dir + turn) % 4
    moves = (action == FORWARD) & passable(cell)
    agent_pos = jnp.where(moves, front, state.agent_pos)
    at_goal = (action == FORWARD) & (kind == GOAL)
    in_lava = (action == FORWARD) & (kind == LAVA)

    picks = (action == PICKUP) & ((kind == KEY) | (kind == BALL) | (kind == BOX)) & hands_empty
    drops = (action == DROP) & (kind == EMPTY) & ~hands_empty
    toggles_door = (action == TOGGLE) & (kind == DOOR)
    unlocks = (toggles_door & (door == LOCKED) & (state.carrying[0] == KEY)
               & (state.carrying[1] == colour))
    flips = toggles_door & (door != LOCKED)
    new_door = jnp.where(unlocks, OPEN, jnp.where(flips, jnp.where(door == OPEN, CLOSED, OPEN),
                                                  door)).astype(jnp.uint8)
    new_cell = jnp.where(picks, jnp.asarray(EMPTY_CELL, dtype=jnp.uint8),
                         jnp.where(drops, state.carrying, cell.at[2].set(new_door)))
    grid = state.grid.at[front[0], front[1]].set(new_cell)
    carrying = jnp.where(picks, cell, jnp.where(drops, jnp.zeros_like(cell), state.carrying))

    step_count = state.step_count + 1
    success = at_goal
    terminated = at_goal | in_lava
    # RedBlueDoors: the doors' states before and after this step decide.
    red, blue = state.marks[0], state.marks[1]
    red_was_open = state.grid[red[0], red[1], 2] == OPEN
    blue_was_open = state.grid[blue[0], blue[1], 2] == OPEN
    red_is_open = grid[red[0], red[1], 2] == OPEN
    blue_is_open = grid[blue[0], blue[1], 2] == OPEN
    is_doors = rule == RULE_RED_BLUE_DOORS
    doors_end = is_doors & (blue_is_open | (red_is_open & blue_was_open))
    doors_win = is_doors & blue_is_open & red_was_open
    # Memory: the cell next to the matching (unmatching) object.
    is_memory = rule == RULE_MEMORY
    memory_win = is_memory & (agent_pos == state.marks[0]).all()
    memory_lose = is_memory & (agent_pos == state.marks[1]).all()
    success = jnp.where(doors_end, doors_win, success)
    success = jnp.where(memory_lose, False, success | memory_win)
    terminated = terminated | doors_end | memory_win | memory_lose

    reward = jnp.where(success, jnp.asarray(tables.reward)[state.task, step_count], 0.0)
    truncated = step_count >= max_steps
    new_state = state.replace(grid=grid, agent_pos=agent_pos, agent_dir=agent_dir,
                              carrying=carrying, step_count=step_count)
    return new_state, reward.astype(jnp.float32), terminated, truncated


def state_from_farama(env: Any, task: int) -> GridState:
    """The ``GridState`` of a Farama MiniGrid env (wrapped or not) in its current state.

    ``task`` is the env's index in the task set it will be stepped with. For tests and tools that
    compare the backends (host-side numpy; not for use under ``jit``).
    """
    env = env.unwrapped
    grid = np.zeros((GRID_SIZE, GRID_SIZE, 3), dtype=np.uint8)
    grid[...] = WALL_CELL
    grid[: env.width, : env.height] = env.grid.encode()
    marks = np.full((2, 2), -1, dtype=np.int32)
    if hasattr(env, "red_door"):
        cells = env.grid.grid
        for row, door in enumerate((env.red_door, env.blue_door)):
            index = next(i for i, c in enumerate(cells) if c is door)
            marks[row] = (index % env.width, index // env.width)
    if hasattr(env, "success_pos"):
        marks[0], marks[1] = env.success_pos, env.failure_pos
    carrying = np.zeros(3, dtype=np.uint8) if env.carrying is None else env.carrying.encode()
    return GridState(
        grid=jnp.asarray(grid),
        agent_pos=jnp.asarray(np.asarray(env.agent_pos, dtype=np.int32)),
        agent_dir=jnp.asarray(np.int32(env.agent_dir)),
        carrying=jnp.asarray(np.asarray(carrying, dtype=np.uint8)),
        step_count=jnp.asarray(np.int32(env.step_count)),
        task=jnp.asarray(np.int32(task)),
        marks=jnp.asarray(marks),
    )
