"""RGB frames of JAX MiniGrid states, pixel for pixel as Farama's ``minigrid`` renders them.

Farama's ``render_mode="rgb_array"`` (``MiniGridEnv.get_full_render``) draws the whole grid at 32
pixels a cell: each cell is a tile drawn at three times its size by filling the pixels whose
centres fall in rectangles, circles, lines and triangles, then averaged down 3 x 3; the agent is a
red triangle pointing its way, and the cells the agent sees (its 7 x 7 view less what walls and
closed doors hide) are highlighted, blended 30% towards white. This module re-implements that
drawing in numpy, vectorised over the pixels of a tile (Farama loops over them in Python), with
Farama's formulas and number types (``minigrid/utils/rendering.py``, ``core/world_object.py``,
``core/grid.py``, Apache-2.0), so that the tiles, and so the frames, are the same bytes; the tests
compare every tile and whole frames with Farama's. It needs neither Farama's package nor pygame.

The highlight is drawn, as Farama's ``rgb_array`` render draws it (its default ``highlight=True``);
``highlight=False`` leaves it out.

Frames are uint8 ``(height * tile_size, width * tile_size, 3)``, row ``y`` of the grid at the top
of the image first, for the task's own ``width`` x ``height`` (the padding of ``GRID_SIZE`` grids
is cut off).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtrl_sparse.envs import minigrid_jax as mj

TILE_SIZE = 32  # Farama's TILE_PIXELS, the tile size of its rgb_array render
SUBDIVS = 3  # tiles are drawn at SUBDIVS times their size, then averaged down

# Farama's COLORS, indexed by colour index (COLOR_TO_IDX).
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [112, 39, 195], [255, 255, 0],
                    [100, 100, 100]])
GRID_LINE = (100, 100, 100)
AGENT_RED = (255, 0, 0)
LAVA_ORANGE = (255, 128, 0)
BLACK = (0, 0, 0)

Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""A region of a tile: (x, y) float64 arrays of pixel centres in [0, 1] -> bool array."""


# --- Farama's regions, vectorised over pixel centres ------------------------------------------


def in_rect(xmin: float, xmax: float, ymin: float, ymax: float) -> Shape:
    """Farama's ``point_in_rect``."""
    return lambda x, y: (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)


def in_circle(cx: float, cy: float, r: float) -> Shape:
    """Farama's ``point_in_circle``."""
    return lambda x, y: (x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r


def in_line(x0: float, y0: float, x1: float, y1: float, r: float) -> Shape:
    """Farama's ``point_in_line``: within ``r`` of the segment, its float32 end points and
    direction and float64 distances (``np.dot`` and ``np.linalg.norm`` of 2-vectors written out
    as their sums of products)."""
    p0 = np.array([x0, y0], dtype=np.float32)
    p1 = np.array([x1, y1], dtype=np.float32)
    direction = p1 - p0
    dist = np.linalg.norm(direction)
    direction = direction / dist
    xmin, xmax = min(x0, x1) - r, max(x0, x1) + r
    ymin, ymax = min(y0, y1) - r, max(y0, y1) + r
    d = direction.astype(np.float64)
    p0_64 = p0.astype(np.float64)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        near = (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)
        pqx, pqy = x - p0_64[0], y - p0_64[1]
        a = np.clip(pqx * d[0] + pqy * d[1], 0, dist)
        dx, dy = x - (p0_64[0] + a * d[0]), y - (p0_64[1] + a * d[1])
        return near & (np.sqrt(dx * dx + dy * dy) <= r)

    return shape


def in_triangle(a: tuple[float, float], b: tuple[float, float],
                c: tuple[float, float]) -> Shape:
    """Farama's ``point_in_triangle`` (barycentric coordinates; its float32 corner products and
    float64 point products)."""
    a32, b32, c32 = (np.array(p, dtype=np.float32) for p in (a, b, c))
    v0, v1 = c32 - a32, b32 - a32
    dot00, dot01, dot11 = np.dot(v0, v0), np.dot(v0, v1), np.dot(v1, v1)
    inv_denom = 1 / (dot00 * dot11 - dot01 * dot01)
    v0_64, v1_64, a64 = (v.astype(np.float64) for v in (v0, v1, a32))

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        v2x, v2y = x - a64[0], y - a64[1]
        dot02 = v0_64[0] * v2x + v0_64[1] * v2y
        dot12 = v1_64[0] * v2x + v1_64[1] * v2y
        u = (dot11 * dot02 - dot01 * dot12) * inv_denom
        v = (dot00 * dot12 - dot01 * dot02) * inv_denom
        return (u >= 0) & (v >= 0) & ((u + v) < 1)

    return shape


def rotated(shape: Shape, cx: float, cy: float, theta: float) -> Shape:
    """Farama's ``rotate_fn``: ``shape`` turned by ``theta`` about ``(cx, cy)``."""
    cos, sin = math.cos(-theta), math.sin(-theta)

    def turned(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = x - cx, y - cy
        return shape(cx + x * cos - y * sin, cy + y * cos + x * sin)

    return turned


# --- tiles ------------------------------------------------------------------------------------


def _fill(img: np.ndarray, shape: Shape, colour) -> None:
    """Farama's ``fill_coords``: ``colour`` (cast to uint8 as numpy assigns it) on every pixel of
    ``img`` (n, n, 3) uint8 whose centre lies in ``shape``."""
    n = img.shape[0]
    centres = (np.arange(n) + 0.5) / n
    x, y = np.meshgrid(centres, centres)  # [y, x]
    img[shape(x, y)] = colour


def _draw_object(img: np.ndarray, kind: int, colour_index: int, state: int) -> None:
    """The ``render`` of Farama's object ``(kind, colour, state)`` onto ``img``."""
    c = COLOURS[colour_index]
    if kind in (mj.GOAL, mj.WALL):
        _fill(img, in_rect(0, 1, 0, 1), c)
    elif kind == mj.FLOOR:
        _fill(img, in_rect(0.031, 1, 0.031, 1), c / 2)
    elif kind == mj.LAVA:
        _fill(img, in_rect(0, 1, 0, 1), LAVA_ORANGE)
        for i in range(3):
            ylo, yhi = 0.3 + 0.2 * i, 0.4 + 0.2 * i
            for x0, y0, x1, y1 in ((0.1, ylo, 0.3, yhi), (0.3, yhi, 0.5, ylo),
                                   (0.5, ylo, 0.7, yhi), (0.7, yhi, 0.9, ylo)):
                _fill(img, in_line(x0, y0, x1, y1, r=0.03), BLACK)
    elif kind == mj.DOOR:
        _draw_door(img, c, state)
    elif kind == mj.KEY:
        _fill(img, in_rect(0.50, 0.63, 0.31, 0.88), c)
        _fill(img, in_rect(0.38, 0.50, 0.59, 0.66), c)
        _fill(img, in_rect(0.38, 0.50, 0.81, 0.88), c)
        _fill(img, in_circle(cx=0.56, cy=0.28, r=0.190), c)
        _fill(img, in_circle(cx=0.56, cy=0.28, r=0.064), BLACK)
    elif kind == mj.BALL:
        _fill(img, in_circle(0.5, 0.5, 0.31), c)
    elif kind == mj.BOX:
        _fill(img, in_rect(0.12, 0.88, 0.12, 0.88), c)
        _fill(img, in_rect(0.18, 0.82, 0.18, 0.82), BLACK)
        _fill(img, in_rect(0.16, 0.84, 0.47, 0.53), c)
    elif kind != mj.EMPTY:
        raise ValueError(f"no tile for object type {kind} (Farama's OBJECT_TO_IDX)")


def _draw_door(img: np.ndarray, c: np.ndarray, state: int) -> None:
    """Farama's ``Door.render``: open, locked or closed."""
    if state == mj.OPEN:
        _fill(img, in_rect(0.88, 1.00, 0.00, 1.00), c)
        _fill(img, in_rect(0.92, 0.96, 0.04, 0.96), BLACK)
    elif state == mj.LOCKED:
        _fill(img, in_rect(0.00, 1.00, 0.00, 1.00), c)
        _fill(img, in_rect(0.06, 0.94, 0.06, 0.94), 0.45 * np.array(c))
        _fill(img, in_rect(0.52, 0.75, 0.50, 0.56), c)
    else:
        _fill(img, in_rect(0.00, 1.00, 0.00, 1.00), c)
        _fill(img, in_rect(0.04, 0.96, 0.04, 0.96), BLACK)
        _fill(img, in_rect(0.08, 0.92, 0.08, 0.92), c)
        _fill(img, in_rect(0.12, 0.88, 0.12, 0.88), BLACK)
        _fill(img, in_circle(cx=0.75, cy=0.50, r=0.08), c)


@functools.lru_cache(maxsize=4096)
def tile(cell: tuple[int, int, int], agent_dir: int | None, highlight: bool,
         tile_size: int = TILE_SIZE) -> np.ndarray:
    """Farama's ``Grid.render_tile`` of the encoded ``cell`` (type, colour, state; an empty
    cell draws nothing), with the agent facing ``agent_dir`` on it (None: no agent), highlighted
    or not: (tile_size, tile_size, 3) uint8 (read-only; cached)."""
    img = np.zeros((tile_size * SUBDIVS, tile_size * SUBDIVS, 3), dtype=np.uint8)
    _fill(img, in_rect(0, 0.031, 0, 1), GRID_LINE)
    _fill(img, in_rect(0, 1, 0, 0.031), GRID_LINE)
    _draw_object(img, *(int(v) for v in cell))
    if agent_dir is not None:
        agent = in_triangle((0.12, 0.19), (0.87, 0.50), (0.12, 0.81))
        _fill(img, rotated(agent, cx=0.5, cy=0.5, theta=0.5 * math.pi * agent_dir), AGENT_RED)
    if highlight:  # Farama's highlight_img, its uint8 arithmetic included
        img[...] = (img + 0.30 * (np.array((255, 255, 255), dtype=np.uint8) - img)
                    ).clip(0, 255).astype(np.uint8)
    small = img.reshape(tile_size, SUBDIVS, tile_size, SUBDIVS, 3).mean(axis=3).mean(axis=1)
    out = small.astype(np.uint8)  # Farama's float tile, cast as its frame assignment casts it
    out.flags.writeable = False
    return out


# --- frames -----------------------------------------------------------------------------------


def visible_cells(state: mj.GridState, see_through_walls: jax.Array) -> jax.Array:
    """The cells the agent sees, (GRID_SIZE, GRID_SIZE) bool indexed ``[x, y]``: its view
    (``minigrid_jax.visible_view``) placed on the grid, as Farama's ``get_full_render`` places
    its visibility mask. One env; jit- and vmap-able."""
    positions, visible = mj.visible_view(state, see_through_walls)
    inside = ((positions >= 0) & (positions < mj.GRID_SIZE)).all(axis=-1)
    clipped = jnp.clip(positions, 0, mj.GRID_SIZE - 1)
    mask = jnp.zeros((mj.GRID_SIZE, mj.GRID_SIZE), dtype=bool)
    return mask.at[clipped[..., 0], clipped[..., 1]].max(visible & inside)


@functools.partial(jax.jit, static_argnames="task_names")
def _visible_cells_of(states: mj.GridState, task_names: tuple[str, ...]) -> jax.Array:
    see_through = jnp.asarray(mj.task_tables(task_names).see_through_walls)
    return jax.vmap(lambda s: visible_cells(s, see_through[s.task]))(states)


_TILE_KEY_DIMS = (256, 256, 256, 5, 2)  # cell type, colour, state; agent (0 or dir + 1); seen


def _tile_of_key(key: int, tile_size: int) -> np.ndarray:
    """``tile`` of a key of ``_TILE_KEY_DIMS`` (``np.ravel_multi_index`` of its parts)."""
    kind, colour, state, agent, seen = (int(v) for v in np.unravel_index(key, _TILE_KEY_DIMS))
    return tile((kind, colour, state), None if agent == 0 else agent - 1, bool(seen), tile_size)


def render_frames(states: mj.GridState, task_names: tuple[str, ...], highlight: bool = True,
                  tile_size: int = TILE_SIZE) -> np.ndarray:
    """Farama's ``rgb_array`` frames of ``states``, a ``GridState`` with a leading (T,) axis whose
    envs all run one task (``task_names[state.task]``): (T, height * tile_size,
    width * tile_size, 3) uint8 for the task's width x height.

    Each frame is its cells' tiles (``tile``), drawn once per distinct (cell, agent, highlight)
    of all the frames and put in place by one gather.
    """
    tasks = np.unique(np.asarray(states.task))
    if tasks.size != 1:
        raise ValueError(f"render_frames draws one task's frames; got tasks {tasks.tolist()}")
    rules = mj.TASK_RULES[task_names[int(tasks[0])]]
    width, height = rules.width, rules.height
    seen = (np.asarray(_visible_cells_of(states, task_names)) if highlight
            else np.zeros((len(states.task), mj.GRID_SIZE, mj.GRID_SIZE), dtype=bool))
    grid = np.asarray(states.grid)[:, :width, :height]  # (T, W, H, 3)
    pos, direction = np.asarray(states.agent_pos), np.asarray(states.agent_dir)
    xs, ys = np.meshgrid(np.arange(width), np.arange(height), indexing="ij")
    agent_here = (xs == pos[:, 0, None, None]) & (ys == pos[:, 1, None, None])  # (T, W, H)
    agent = np.where(agent_here, direction[:, None, None] + 1, 0)  # 0: no agent, else dir + 1
    tile_kinds = (grid[..., 0], grid[..., 1], grid[..., 2], agent, seen[:, :width, :height])
    keys = np.ravel_multi_index(tile_kinds, _TILE_KEY_DIMS)
    unique, index = np.unique(keys, return_inverse=True)
    atlas = np.stack([_tile_of_key(key, tile_size) for key in unique.tolist()])
    tiles = atlas[index.reshape(keys.shape)]  # (T, W, H, ts, ts, 3)
    frames = tiles.transpose(0, 2, 3, 1, 4, 5)  # (T, H, ts, W, ts, 3)
    return np.ascontiguousarray(frames.reshape(len(keys), height * tile_size, width * tile_size,
                                               3))
