"""MiniGrid's layouts (the reset generators) as pure JAX functions.

``reset_state(task_names, key, task)`` draws a fresh episode of task ``task`` (a traced index into
``task_names``) as a ``GridState`` of ``minigrid_jax.py``: ``step_count`` 0, nothing carried, and
the task's ``marks``. Each of the seven tasks of ``TASK_RULES`` has a generator that re-implements
the ``_gen_grid`` of its registered Farama ``minigrid`` env (Chevalier-Boisvert et al., 2023,
"Minigrid & Miniworld", arXiv 2306.13831) so that the layouts follow **the same distribution** as
Farama's: the random numbers differ, the probability of every layout does not. The tests check
this by chi-square tests of homogeneity against Farama's own resets.

Approach. Every draw of Farama's generators is one of three kinds, each with a direct counterpart:

* ``_rand_int(low, high)``, ``_rand_elem`` and ``np_random.choice``: a uniform integer
  (``jax.random.randint``, whose bounds may be traced);
* ``np_random.shuffle``: a uniform permutation (``jax.random.permutation``);
* ``place_obj`` / ``place_agent``: rejection sampling of a cell of a rectangle until it is empty
  and not the agent's, i.e. a uniform draw among the valid cells; here the r-th valid cell of the
  flattened mask of valid cells, r a uniform integer below their number. ``place_agent`` then
  draws a uniform direction.

The draws that depend on earlier ones (a rectangle whose size was drawn, a cell that must avoid
the agent) are made on the grid as built so far, in Farama's order. MultiRoom's room placement is
a loop with retries: its tries are drawn all at once and the first valid one is taken, which has
the distribution of Farama's sequential tries, and its outer rejection loop is a
``jax.lax.while_loop``. Each generator is written for its env id's registered arguments (sizes,
number of crossings, room sizes): a generator takes a key and returns a ``GridState`` with task 0.

Shapes follow ``GridState``: grids ``(GRID_SIZE, GRID_SIZE, 3)`` uint8 indexed ``[x, y]``, positions
``(2,)`` int32 ``(x, y)``. Grids are padded with walls outside the task's width x height, as
``state_from_farama`` pads Farama's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtrl_sparse.envs.minigrid_jax import (
    BALL,
    BLUE,
    CLOSED,
    DOOR,
    EMPTY,
    EMPTY_CELL,
    GOAL,
    GREEN,
    GRID_SIZE,
    KEY,
    LAVA,
    LOCKED,
    NOTHING,
    RED,
    TASK_RULES,
    WALL_CELL,
    YELLOW,
    GridState,
)

NUM_COLOURS = 6
GOAL_CELL = (GOAL, GREEN, 0)
LAVA_CELL = (LAVA, RED, 0)

# Cell coordinates, (GRID_SIZE, GRID_SIZE) int32 each, indexed [x, y].
_xs, _ys = np.meshgrid(np.arange(GRID_SIZE, dtype=np.int32), np.arange(GRID_SIZE, dtype=np.int32),
                     indexing="ij")


# --- grid building blocks ---------------------------------------------------------------------


def _blank(width: int, height: int) -> np.ndarray:
    """A (GRID_SIZE, GRID_SIZE, 3) uint8 grid, empty cells inside ``width`` x ``height`` and walls
    (the padding) outside: Farama's ``Grid(width, height)``."""
    grid = np.empty((GRID_SIZE, GRID_SIZE, 3), dtype=np.uint8)
    grid[...] = WALL_CELL
    grid[:width, :height] = EMPTY_CELL
    return grid


def _wall_rect(grid: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Farama's ``Grid.wall_rect``: the outline of the ``w`` x ``h`` rectangle at ``(x, y)``
    (a copy of ``grid``, numpy)."""
    grid = grid.copy()
    grid[x:x + w, [y, y + h - 1]] = WALL_CELL
    grid[[x, x + w - 1], y:y + h] = WALL_CELL
    return grid


def _cell(kind: jax.Array | int, colour: jax.Array | int, state: jax.Array | int) -> jax.Array:
    """One encoded cell, (3,) uint8."""
    return jnp.stack([jnp.asarray(kind), jnp.asarray(colour), jnp.asarray(state)]).astype(jnp.uint8)


def _put(grid: jax.Array, pos: jax.Array, cell: jax.Array) -> jax.Array:
    """``grid`` with ``cell`` (3,) at ``pos`` (2,)."""
    return grid.at[pos[0], pos[1]].set(cell)


def _paint(grid: jax.Array, mask: jax.Array, cell: tuple[int, int, int]) -> jax.Array:
    """``grid`` with ``cell`` wherever ``mask`` (GRID_SIZE, GRID_SIZE) bool is true."""
    return jnp.where(mask[..., None], jnp.asarray(cell, dtype=jnp.uint8), grid)


def _randint(key: jax.Array, low: jax.Array | int, high: jax.Array | int) -> jax.Array:
    """Farama's ``_rand_int(low, high)``: uniform in [low, high), () int32."""
    return jax.random.randint(key, (), low, high, dtype=jnp.int32)


def _in_rect(top: jax.Array, size: jax.Array, width: int, height: int) -> jax.Array:
    """The cells of ``place_obj``'s rectangle, (GRID_SIZE, GRID_SIZE) bool: ``top`` clipped at 0,
    the far corner ``top + size`` clipped to the task's ``width`` x ``height``."""
    top = jnp.asarray(top)
    far = jnp.minimum(top + jnp.asarray(size), jnp.array([width, height]))
    top = jnp.maximum(top, 0)
    return (_xs >= top[0]) & (_xs < far[0]) & (_ys >= top[1]) & (_ys < far[1])


def _uniform_cell(key: jax.Array, mask: jax.Array) -> jax.Array:
    """A uniform cell among the true cells of ``mask`` (GRID_SIZE, GRID_SIZE) bool, (2,) int32
    ``(x, y)``: the r-th true cell in row-major order for r uniform in [0, number of true cells).
    (One random integer instead of a categorical draw's random float per cell: cheaper, and free
    of the float draw's tie-breaking.) ``mask`` must have a true cell."""
    flat = mask.reshape(-1)
    rank = _randint(key, 0, flat.sum(dtype=jnp.int32))
    index = jnp.argmax(jnp.cumsum(flat, dtype=jnp.int32) > rank)
    return jnp.stack([index // GRID_SIZE, index % GRID_SIZE]).astype(jnp.int32)


def _place(key: jax.Array, grid: jax.Array, top: jax.Array, size: jax.Array, width: int,
           height: int, agent_pos: jax.Array | None = None) -> jax.Array:
    """Farama's ``place_obj``'s cell, (2,) int32: uniform among the empty cells of the rectangle
    (``_in_rect``) other than ``agent_pos`` (if given)."""
    mask = _in_rect(top, size, width, height) & (grid[..., 0] == EMPTY)
    if agent_pos is not None:
        mask = mask & ~((_xs == agent_pos[0]) & (_ys == agent_pos[1]))
    return _uniform_cell(key, mask)


def _place_agent(key: jax.Array, grid: jax.Array, top: jax.Array, size: jax.Array, width: int,
                 height: int) -> tuple[jax.Array, jax.Array]:
    """Farama's ``place_agent``: ``(position (2,) int32, direction () int32)``, the position as
    ``_place``'s, the direction uniform in [0, 4)."""
    key_pos, key_dir = jax.random.split(key)
    pos = _place(key_pos, grid, top, size, width, height)
    return pos, _randint(key_dir, 0, 4)


def _layout(grid: jax.Array, agent_pos: jax.Array, agent_dir: jax.Array,
            marks: jax.Array | None = None) -> GridState:
    """A fresh episode's ``GridState``: nothing carried, step 0, task 0, ``marks`` (2, 2) int32
    (default -1)."""
    if marks is None:
        marks = jnp.full((2, 2), -1, dtype=jnp.int32)
    return GridState(
        grid=jnp.asarray(grid, dtype=jnp.uint8),
        agent_pos=jnp.asarray(agent_pos, dtype=jnp.int32),
        agent_dir=jnp.asarray(agent_dir, dtype=jnp.int32),
        carrying=jnp.asarray(NOTHING, dtype=jnp.uint8),
        step_count=jnp.int32(0),
        task=jnp.int32(0),
        marks=jnp.asarray(marks, dtype=jnp.int32),
    )


# --- the generators ---------------------------------------------------------------------------


def _lava_gap(key: jax.Array) -> GridState:
    """MiniGrid-LavaGapS7-v0 (``LavaGapEnv._gen_grid``, size 7): a lava column at x in [2, 5)
    with one gap at y in [1, 6); agent (1, 1) facing +x, goal in the far corner."""
    size = TASK_RULES["MiniGrid-LavaGapS7-v0"].width
    base = _wall_rect(_blank(size, size), 0, 0, size, size)
    base[size - 2, size - 2] = GOAL_CELL
    key_x, key_y = jax.random.split(key)
    gap = jnp.stack([_randint(key_x, 2, size - 2), _randint(key_y, 1, size - 1)])
    lava = (_xs == gap[0]) & (_ys >= 1) & (_ys <= size - 2) & (_ys != gap[1])
    return _layout(_paint(jnp.asarray(base), lava, LAVA_CELL), jnp.array([1, 1]), 0)


def _red_blue_doors(key: jax.Array) -> GridState:
    """MiniGrid-RedBlueDoors-6x6-v0 (``RedBlueDoorEnv._gen_grid``, size 6, a 12 x 6 grid): the
    agent anywhere in the middle room (placed first), then the red door on the room's left wall
    and the blue door on its right wall, each at y in [1, 5). Marks: red door, blue door."""
    rules = TASK_RULES["MiniGrid-RedBlueDoors-6x6-v0"]
    size = rules.height
    room_x = size // 2
    base = _wall_rect(_blank(rules.width, rules.height), 0, 0, 2 * size, size)
    base = _wall_rect(base, room_x, 0, size, size)
    key_agent, key_red, key_blue = jax.random.split(key, 3)
    grid = jnp.asarray(base)
    agent_pos, agent_dir = _place_agent(key_agent, grid, jnp.array([room_x, 0]),
                                        jnp.array([size, size]), rules.width, rules.height)
    red = jnp.stack([jnp.int32(room_x), _randint(key_red, 1, size - 1)])
    blue = jnp.stack([jnp.int32(room_x + size - 1), _randint(key_blue, 1, size - 1)])
    grid = _put(grid, red, _cell(DOOR, RED, CLOSED))
    grid = _put(grid, blue, _cell(DOOR, BLUE, CLOSED))
    return _layout(grid, agent_pos, agent_dir, jnp.stack([red, blue]))


def _memory_walls(size: int, hallway_end: int) -> np.ndarray:
    """The walls of ``MemoryEnv._gen_grid`` (numpy (GRID_SIZE, GRID_SIZE, 3) uint8)."""
    grid = _wall_rect(_blank(size, size), 0, 0, size, size)
    upper, lower = size // 2 - 2, size // 2 + 2
    grid[1:5, [upper, lower]] = WALL_CELL
    grid[4, [upper + 1, lower - 1]] = WALL_CELL
    grid[5:hallway_end, [upper + 1, lower - 1]] = WALL_CELL
    grid[hallway_end, :size] = WALL_CELL
    grid[hallway_end, size // 2] = EMPTY_CELL
    grid[hallway_end + 2, :size] = WALL_CELL
    return grid


def _memory(key: jax.Array) -> GridState:
    """MiniGrid-MemoryS11-v0 (``MemoryEnv._gen_grid``, size 11, fixed hallway): the agent at
    x in [1, hallway_end + 1) on the middle row facing +x; a green key or ball in the start room;
    at the hallway's end a ball above and a key below, or the reverse. Marks: the cell next to
    the matching object (success), the cell next to the other one (failure)."""
    size = TASK_RULES["MiniGrid-MemoryS11-v0"].width
    mid, hallway_end = size // 2, size - 3
    key_agent, key_start, key_pair = jax.random.split(key, 3)
    agent_pos = jnp.stack([_randint(key_agent, 1, hallway_end + 1), jnp.int32(mid)])
    start_kind = jnp.where(_randint(key_start, 0, 2) == 0, KEY, BALL)  # _rand_elem([Key, Ball])
    # _rand_elem([[Ball, Key], [Key, Ball]]): the object above the split, then the one below.
    upper_kind = jnp.where(_randint(key_pair, 0, 2) == 0, BALL, KEY)
    lower_kind = BALL + KEY - upper_kind
    upper = jnp.array([hallway_end + 1, mid - 2])
    lower = jnp.array([hallway_end + 1, mid + 2])
    grid = jnp.asarray(_memory_walls(size, hallway_end))
    grid = _put(grid, jnp.array([1, mid - 1]), _cell(start_kind, GREEN, 0))
    grid = _put(grid, upper, _cell(upper_kind, GREEN, 0))
    grid = _put(grid, lower, _cell(lower_kind, GREEN, 0))
    beside_upper, beside_lower = upper + jnp.array([0, 1]), lower - jnp.array([0, 1])
    matches_upper = start_kind == upper_kind
    marks = jnp.where(matches_upper, jnp.stack([beside_upper, beside_lower]),
                      jnp.stack([beside_lower, beside_upper]))
    return _layout(grid, agent_pos, 0, marks)


def _door_key(key: jax.Array) -> GridState:
    """MiniGrid-DoorKey-6x6-v0 (``DoorKeyEnv._gen_grid``, size 6): a wall column at x in [2, 4),
    the agent left of it (placed first), a locked yellow door in the column at y in [1, 4), then a
    yellow key left of the column off the agent's cell; goal in the far corner."""
    size = TASK_RULES["MiniGrid-DoorKey-6x6-v0"].width
    base = _wall_rect(_blank(size, size), 0, 0, size, size)
    base[size - 2, size - 2] = GOAL_CELL
    key_split, key_agent, key_door, key_key = jax.random.split(key, 4)
    split = _randint(key_split, 2, size - 2)
    grid = _paint(jnp.asarray(base), (_xs == split) & (_ys < size), WALL_CELL)
    left = jnp.stack([split, jnp.int32(size)])  # the rectangle's size: x in [0, split)
    origin = jnp.array([0, 0])
    agent_pos, agent_dir = _place_agent(key_agent, grid, origin, left, size, size)
    door = jnp.stack([split, _randint(key_door, 1, size - 2)])
    grid = _put(grid, door, _cell(DOOR, YELLOW, LOCKED))
    key_pos = _place(key_key, grid, origin, left, size, size, agent_pos)
    grid = _put(grid, key_pos, _cell(KEY, YELLOW, 0))
    return _layout(grid, agent_pos, agent_dir)


def _dist_shift(key: jax.Array) -> GridState:
    """MiniGrid-DistShift1-v0 (``DistShiftEnv._gen_grid``, 9 x 7, strip2_row 2): deterministic;
    two lava strips x in [3, width - 3) on rows 1 and 2, goal (width - 2, 1), agent (1, 1) facing
    +x. ``key`` is unused."""
    del key
    rules = TASK_RULES["MiniGrid-DistShift1-v0"]
    width, height = rules.width, rules.height
    grid = _wall_rect(_blank(width, height), 0, 0, width, height)
    grid[width - 2, 1] = GOAL_CELL
    grid[3:width - 3, [1, 2]] = LAVA_CELL
    return _layout(grid, jnp.array([1, 1]), 0)


def _crossing_openings(key: jax.Array, grid: jax.Array, limits_x: jax.Array, limits_y: jax.Array,
                       crosses_x: jax.Array) -> jax.Array:
    """The openings of ``CrossingEnv._gen_grid``: walking the path from the top-left room, each
    step opens one cell of the next wall in its direction, uniform along the current room's side.

    ``limits_x`` (L + 2,) int32 for L candidate walls per direction: 0, the x of the vertical
    walls in increasing order, then ``size - 1`` repeated; ``limits_y`` likewise for the
    horizontal walls; ``crosses_x`` (n,) bool for n crossings: step t crosses a vertical wall
    (moves along x). Returns ``grid`` with the openings.
    """
    room_x, room_y = jnp.int32(0), jnp.int32(0)
    for step_key, along_x in zip(jax.random.split(key, crosses_x.shape[0]), crosses_x,
                                 strict=True):
        # Crossing a vertical wall at x = limits_x[room_x + 1]: the opening's y is in the room's
        # open rows; crossing a horizontal wall: its x is in the room's open columns.
        low = jnp.where(along_x, limits_y[room_y], limits_x[room_x]) + 1
        high = jnp.where(along_x, limits_y[room_y + 1], limits_x[room_x + 1])
        offset = _randint(step_key, low, high)
        opening = jnp.where(along_x, jnp.stack([limits_x[room_x + 1], offset]),
                            jnp.stack([offset, limits_y[room_y + 1]]))
        grid = _put(grid, opening, jnp.asarray(EMPTY_CELL, dtype=jnp.uint8))
        room_x = room_x + along_x
        room_y = room_y + ~along_x
    return grid


def _simple_crossing(key: jax.Array) -> GridState:
    """MiniGrid-SimpleCrossingS9N2-v0 (``CrossingEnv._gen_grid``, size 9, 2 crossings, walls):
    a uniform 2-subset of the 6 candidate walls (vertical at x = 2, 4, 6, horizontal at y = 2, 4,
    6; Farama shuffles the list and keeps the first 2), a uniform order of the crossings along the
    path, and one uniform opening per crossing; agent (1, 1) facing +x, goal in the far corner."""
    size = TASK_RULES["MiniGrid-SimpleCrossingS9N2-v0"].width
    num_crossings = 2
    lines = np.arange(2, size - 2, 2, dtype=np.int32)  # (L,) candidate wall coordinates
    num_lines = lines.shape[0]
    key_walls, key_path, key_open = jax.random.split(key, 3)
    # Candidates 0..L-1 are the vertical walls x = lines, L..2L-1 the horizontal ones y = lines.
    chosen = jnp.zeros(2 * num_lines, dtype=bool).at[
        jax.random.permutation(key_walls, 2 * num_lines)[:num_crossings]].set(True)
    chosen_x, chosen_y = chosen[:num_lines], chosen[num_lines:]
    wall_x = jnp.zeros(GRID_SIZE, dtype=bool).at[lines].set(chosen_x)  # indexed by x
    wall_y = jnp.zeros(GRID_SIZE, dtype=bool).at[lines].set(chosen_y)  # indexed by y
    inside = (_xs >= 1) & (_xs <= size - 2) & (_ys >= 1) & (_ys <= size - 2)
    base = _wall_rect(_blank(size, size), 0, 0, size, size)
    base[size - 2, size - 2] = GOAL_CELL
    grid = _paint(jnp.asarray(base), inside & (wall_x[_xs] | wall_y[_ys]), WALL_CELL)

    def limits(chosen_lines: jax.Array) -> jax.Array:
        inner = jnp.sort(jnp.where(chosen_lines, lines, size - 1))
        return jnp.concatenate([jnp.array([0]), inner, jnp.array([size - 1])]).astype(jnp.int32)

    # The path: one step along x per vertical wall, one along y per horizontal one, shuffled.
    along_x = jnp.arange(num_crossings) < chosen_x.sum()
    along_x = along_x[jax.random.permutation(key_path, num_crossings)]
    grid = _crossing_openings(key_open, grid, limits(chosen_x), limits(chosen_y), along_x)
    return _layout(grid, jnp.array([1, 1]), 0)


# MultiRoom-N2-S4: two rooms of 4 x 4 (minSz = maxSz = 4), at most 8 tries for the second room.
ROOM_SIZE = 4
ROOM_TRIES = 8
EXIT_WALLS = np.array([0, 1, 3], dtype=np.int32)  # right, south, north (the entry wall is 2, left)


def _room_fits(top: jax.Array, width: int, height: int) -> jax.Array:
    """``_placeRoom``'s bounds test of a room at ``top`` (..., 2), () bool per room. Farama's test
    is asymmetric: ``topX + size > width`` but ``topY + size >= height`` fails."""
    return ((top >= 0).all(axis=-1) & (top[..., 0] + ROOM_SIZE <= width)
            & (top[..., 1] + ROOM_SIZE < height))


def _multi_room_attempt(key: jax.Array, width: int, height: int
                        ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One pass of ``MultiRoomEnv._gen_grid``'s outer loop: the first room at a uniform
    ``(x, y)`` in [0, width - 2)^2, then up to ``ROOM_TRIES`` tries of an exit door and the second
    room behind it, the first try that fits winning. (The overlap test of ``_placeRoom`` looks at
    ``roomList[:-1]``, which is empty for the second room: it never rejects.)

    Returns ``(ok, top0, top1, door)``: ok () bool, both rooms placed; the rooms' top-left corners
    and the door between them, (2,) int32 each.
    """
    key_x, key_y, key_wall, key_door, key_top = jax.random.split(key, 5)
    # Farama draws both coordinates of the first room below width - 2 (the grid is square).
    top0 = jnp.stack([_randint(key_x, 0, width - 2), _randint(key_y, 0, width - 2)])
    walls = jnp.asarray(EXIT_WALLS)[jax.random.randint(key_wall, (ROOM_TRIES,), 0, 3)]
    offsets = jax.random.randint(key_door, (ROOM_TRIES,), 1, ROOM_SIZE - 1)
    # The next room's side along the door's wall: _rand_int(d - size + 2, d) = d + shift.
    shifts = jax.random.randint(key_top, (ROOM_TRIES,), 2 - ROOM_SIZE, 0)
    x0, y0, far = top0[0], top0[1], ROOM_SIZE - 1
    right, south = walls == 0, walls == 1
    door_x = jnp.where(right, x0 + far, x0 + offsets)
    door_y = jnp.where(right, y0 + offsets, jnp.where(south, y0 + far, y0))
    # Exit right: the next room's left wall is the door's; south: its top wall; north: its bottom.
    top1_x = jnp.where(right, door_x, door_x + shifts)
    top1_y = jnp.where(right, door_y + shifts, jnp.where(south, door_y, door_y - far))
    top1 = jnp.stack([top1_x, top1_y], axis=-1)  # (ROOM_TRIES, 2)
    fits = _room_fits(top1, width, height)
    first = jnp.argmax(fits)
    ok = _room_fits(top0, width, height) & fits.any()
    door = jnp.stack([door_x[first], door_y[first]])
    return ok, top0, top1[first], door


def _room_walls(top: jax.Array) -> jax.Array:
    """The outline of the ``ROOM_SIZE`` room at ``top`` (2,), (GRID_SIZE, GRID_SIZE) bool."""
    dx, dy = _xs - top[0], _ys - top[1]
    inside = (dx >= 0) & (dx < ROOM_SIZE) & (dy >= 0) & (dy < ROOM_SIZE)
    return inside & ((dx == 0) | (dx == ROOM_SIZE - 1) | (dy == 0) | (dy == ROOM_SIZE - 1))


def _multi_room(key: jax.Array) -> GridState:
    """MiniGrid-MultiRoom-N2-S4-v0 (``MultiRoomEnv._gen_grid``, 2 rooms of 4 x 4 in a 25 x 25
    grid of empty cells): the outer loop re-draws until both rooms are placed; a closed door of a
    uniform colour (the first door: no previous colour to avoid) between them; the agent in the
    first room with a uniform direction, then the goal in the second."""
    rules = TASK_RULES["MiniGrid-MultiRoom-N2-S4-v0"]
    width, height = rules.width, rules.height
    key_rooms, key_colour, key_agent, key_goal = jax.random.split(key, 4)

    def retry(carry):
        loop_key = carry[0]
        loop_key, attempt_key = jax.random.split(loop_key)
        return (loop_key, *_multi_room_attempt(attempt_key, width, height))

    zero = jnp.zeros(2, dtype=jnp.int32)
    _, _, top0, top1, door = jax.lax.while_loop(
        lambda carry: ~carry[1], retry, (key_rooms, jnp.bool_(False), zero, zero, zero))
    grid = jnp.full((GRID_SIZE, GRID_SIZE, 3), jnp.asarray(EMPTY_CELL, dtype=jnp.uint8))
    grid = _paint(grid, _room_walls(top0) | _room_walls(top1), WALL_CELL)
    grid = _put(grid, door, _cell(DOOR, _randint(key_colour, 0, NUM_COLOURS), CLOSED))
    room = jnp.array([ROOM_SIZE, ROOM_SIZE])
    agent_pos, agent_dir = _place_agent(key_agent, grid, top0, room, width, height)
    goal = _place(key_goal, grid, top1, room, width, height, agent_pos)
    grid = _put(grid, goal, jnp.asarray(GOAL_CELL, dtype=jnp.uint8))
    return _layout(grid, agent_pos, agent_dir)


GENERATORS: dict[str, Callable[[jax.Array], GridState]] = {
    "MiniGrid-LavaGapS7-v0": _lava_gap,
    "MiniGrid-RedBlueDoors-6x6-v0": _red_blue_doors,
    "MiniGrid-MemoryS11-v0": _memory,
    "MiniGrid-DoorKey-6x6-v0": _door_key,
    "MiniGrid-DistShift1-v0": _dist_shift,
    "MiniGrid-SimpleCrossingS9N2-v0": _simple_crossing,
    "MiniGrid-MultiRoom-N2-S4-v0": _multi_room,
}
"""The layout generator of each task: a key in, a fresh ``GridState`` (task 0) out."""


def reset_state(task_names: Sequence[str], key: jax.Array, task: jax.Array) -> GridState:
    """A fresh episode of task ``task_names[task]``, drawn as Farama's generator of that task.

    Args:
        task_names: the task set, Farama env ids (keys of ``GENERATORS``); static.
        key: a PRNG key.
        task: () integer, the task's index in ``task_names`` (may be traced; under ``vmap`` with
            a batched ``task`` every generator runs and the task's layout is selected).

    Returns:
        The ``GridState``: step 0, nothing carried, ``task`` as int32, the task's marks.

    Raises:
        ValueError: a task without a generator (the message lists those with one).
    """
    unknown = [name for name in task_names if name not in GENERATORS]
    if unknown:
        raise ValueError(f"no JAX MiniGrid layout generator of {unknown}; available: "
                         f"{tuple(GENERATORS)}")
    task = jnp.asarray(task, dtype=jnp.int32)
    state = jax.lax.switch(task, [GENERATORS[name] for name in task_names], key)
    return state.replace(task=task)
