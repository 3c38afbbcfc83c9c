"""Tests of the JAX MiniGrid layouts (``envs/minigrid_jax_layouts.py``) against Farama's generators.

Structure (fast). Every JAX layout is decoded into the random draws of Farama's generator that
would produce it (the task's "random parts": positions, directions, door rows, objects, walls,
path order); Farama's own ``_gen_grid`` is then run with its random number generator replaced by
a stand-in that returns exactly those draws, and the transplanted state (``state_from_farama``)
must equal the JAX layout field for field. So every JAX layout is a layout Farama can produce,
drawn in Farama's order with Farama's bounds (a draw out of Farama's range fails the stand-in).
A few invariants are also checked directly (the agent on an empty cell, the doors and marks).

Distributions (slow). For each task, ``NUM_LAYOUTS`` layouts from each backend (Farama: one env
reset with a fixed seed, then reset repeatedly; JAX: one jitted vmapped call on a fixed key) are
decoded the same way, and the distribution of each random part (and of some joints, and of the
whole layout where it takes few values), and of the layouts' shortest solution lengths (the JAX
search, tested equal to Farama's in ``test_minigrid_jax_optimal.py``, on both samples) is
compared by a chi-square test of homogeneity on the
category counts (Pearson's statistic, ``scipy.stats.chi2_contingency`` without Yates'
correction), categories seen fewer than ``MIN_COUNT``
times in both samples together pooled into one. Every p-value must exceed ``P_MIN = 1e-3``.
The seeds are fixed, so the test is deterministic. Its power is shown on DoorKey samples with a
biased split and with an off-by-one door row, both of which must be rejected.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

import gymnasium as gym
import jax
import numpy as np
import pytest
from scipy.stats import chi2_contingency

from mtrl_sparse.envs.minigrid_jax import (
    BALL,
    BLUE,
    CLOSED,
    DOOR,
    EMPTY,
    GOAL,
    KEY,
    LAVA,
    RED,
    TASK_RULES,
    WALL,
    GridState,
    state_from_farama,
    task_tables,
)
from mtrl_sparse.envs.minigrid_jax_layouts import reset_state
from mtrl_sparse.envs.minigrid_jax_optimal import optimal_steps

# Farama's minigrid registers the env ids with gymnasium on import
FARAMA = pytest.importorskip("minigrid", reason="needs Farama's minigrid (the farama extra)")
COLOR_NAMES = FARAMA.core.constants.COLOR_NAMES
IDX_TO_COLOR = FARAMA.core.constants.IDX_TO_COLOR

NAMES = tuple(TASK_RULES)
LAVA_GAP, RED_BLUE, MEMORY, DOOR_KEY, DIST_SHIFT, CROSSING, MULTI_ROOM = NAMES
PER_TASK = 24  # structure test: layouts per task
NUM_LAYOUTS = 2000  # distribution test: layouts per task and backend
MIN_COUNT = 10  # categories with fewer samples (both backends together) are pooled
P_MIN = 1e-3

# One compiled program each: a batch of tasks (every generator runs, the task's is selected),
# and one task for a batch of keys (only that task's generator runs).
sample_tasks = jax.jit(jax.vmap(functools.partial(reset_state, NAMES)))
sample_task = jax.jit(jax.vmap(functools.partial(reset_state, NAMES), in_axes=(0, None)))
shortest = jax.jit(jax.vmap(functools.partial(optimal_steps, task_tables(NAMES))))


def _host(state) -> list[dict[str, np.ndarray]]:
    """A batch of ``GridState`` as a list of per-layout dicts of numpy arrays."""
    fields = {name: np.asarray(value) for name, value in vars(state).items()}
    return [{name: value[i] for name, value in fields.items()}
            for i in range(fields["grid"].shape[0])]


def _host_one(state) -> dict[str, np.ndarray]:
    """One ``GridState`` as a dict of numpy arrays."""
    return {name: np.asarray(value) for name, value in vars(state).items()}


# --- decoding a layout into Farama's random draws ---------------------------------------------


def _only(cells: np.ndarray) -> tuple[int, ...]:
    """The single row of ``np.argwhere`` output ``cells``, as ints."""
    assert len(cells) == 1, cells
    return tuple(int(v) for v in cells[0])


def _find(layout: dict[str, np.ndarray], kind: int) -> tuple[int, int]:
    """The single cell of object type ``kind``."""
    return _only(np.argwhere(layout["grid"][..., 0] == kind))


def _agent(layout: dict[str, np.ndarray]) -> tuple[int, int]:
    return tuple(int(v) for v in layout["agent_pos"])


def _parts_lava_gap(layout):
    lava = layout["grid"][..., 0] == LAVA
    (x,) = _only(np.argwhere(lava.any(axis=1)))
    size = TASK_RULES[LAVA_GAP].height
    (y,) = _only(np.argwhere(~lava[x, 1:size - 1]) + 1)
    return {"gap": (x, y)}


def _parts_red_blue(layout):
    red, blue = (tuple(int(v) for v in mark) for mark in layout["marks"])
    return {"agent": _agent(layout), "dir": int(layout["agent_dir"]), "red": red[1],
            "blue": blue[1], "doors": (red[1], blue[1])}


def _parts_memory(layout):
    size = TASK_RULES[MEMORY].height
    kind = layout["grid"][..., 0]
    return {"agent_x": _agent(layout)[0], "start": int(kind[1, size // 2 - 1]),
            "upper": int(kind[size - 2, size // 2 - 2])}


def _parts_door_key(layout):
    split, door = _find(layout, DOOR)
    key, agent = _find(layout, KEY), _agent(layout)
    return {"split": split, "door": door, "agent": agent, "dir": int(layout["agent_dir"]),
            "key": key, "walls_door_key": (split, door, key), "agent_key": (agent, key)}


def _parts_dist_shift(layout):
    return {}


CROSSING_LINES = (2, 4, 6)  # the candidate walls' coordinates (vertical x, then horizontal y)


def _parts_crossing(layout):
    """Walls (indices into Farama's river list: vertical x = 2, 4, 6, then horizontal y = 2, 4,
    6), the path ("x" crosses a vertical wall), and the openings in path order."""
    size = TASK_RULES[CROSSING].width
    kind = layout["grid"][..., 0]
    inner = slice(1, size - 1)
    vertical = [x for x in CROSSING_LINES if (kind[x, inner] == WALL).sum() >= size - 3]
    horizontal = [y for y in CROSSING_LINES if (kind[inner, y] == WALL).sum() >= size - 3]
    walls = tuple([CROSSING_LINES.index(x) for x in vertical]
                  + [len(CROSSING_LINES) + CROSSING_LINES.index(y) for y in horizontal])
    limits_x, limits_y = [0, *vertical, size - 1], [0, *horizontal, size - 1]
    room_x = room_y = 0
    path, openings = [], []
    for _ in range(len(walls)):
        x = limits_x[room_x + 1]
        gaps = np.argwhere(kind[x, limits_y[room_y] + 1:limits_y[room_y + 1]] == EMPTY)
        if room_x < len(vertical) and len(gaps):  # the next vertical wall opens into this room
            openings.append((x, limits_y[room_y] + 1 + _only(gaps)[0]))
            path.append("x")
            room_x += 1
        else:
            y = limits_y[room_y + 1]
            gaps = np.argwhere(kind[limits_x[room_x] + 1:limits_x[room_x + 1], y] == EMPTY)
            openings.append((limits_x[room_x] + 1 + _only(gaps)[0], y))
            path.append("y")
            room_y += 1
    return {"walls": walls, "path": tuple(path), "opening_1": openings[0],
            "opening_2": openings[1]}


ROOM = 4
EXIT_WALLS = (0, 1, 3)  # Farama's sorted exit walls of the first room (right, south, north)


def _room_top(kind: np.ndarray, inside: tuple[int, int]) -> tuple[int, int]:
    """The top-left corner of the 4 x 4 room whose 2 x 2 interior holds the cell ``inside``."""
    found = []
    for tx in (inside[0] - 2, inside[0] - 1):
        for ty in (inside[1] - 2, inside[1] - 1):
            room = kind[tx:tx + ROOM, ty:ty + ROOM]
            outline = np.ones((ROOM, ROOM), dtype=bool)
            outline[1:-1, 1:-1] = False
            solid = (room == WALL) | (room == DOOR)
            if room.shape == outline.shape and (solid == outline).all():
                found.append((tx, ty))
    assert len(found) == 1, found
    return found[0]


def _parts_multi_room(layout):
    kind = layout["grid"][..., 0]
    door, agent, goal = _find(layout, DOOR), _agent(layout), _find(layout, GOAL)
    top0, top1 = _room_top(kind, agent), _room_top(kind, goal)
    if door[0] == top0[0] + ROOM - 1:
        wall, offset = 0, door[1] - top0[1]
    else:
        wall = 1 if door[1] == top0[1] + ROOM - 1 else 3
        offset = door[0] - top0[0]
        assert door[1] == top0[1] + (ROOM - 1 if wall == 1 else 0)
    return {"room0_x": top0[0], "room0_y": top0[1], "exit": wall, "door_offset": offset,
            "room1": (top1[0] - top0[0], top1[1] - top0[1]),
            "colour": int(layout["grid"][door][1]), "agent": (agent[0] - top0[0],
                                                              agent[1] - top0[1]),
            "dir": int(layout["agent_dir"]), "goal": (goal[0] - top1[0], goal[1] - top1[1])}


def _script_multi_room(parts):
    top0 = (parts["room0_x"], parts["room0_y"])
    top1 = (top0[0] + parts["room1"][0], top0[1] + parts["room1"][1])
    colour = COLOR_NAMES.index(IDX_TO_COLOR[parts["colour"]])
    agent = (top0[0] + parts["agent"][0], top0[1] + parts["agent"][1])
    goal = (top1[0] + parts["goal"][0], top1[1] + parts["goal"][1])
    # numRooms, the first room's corner, its size, then one try: the exit wall, the door's
    # offset, the second room's size and its corner along the door's wall.
    return [2, *top0, ROOM, ROOM, EXIT_WALLS.index(parts["exit"]), parts["door_offset"], ROOM,
            ROOM, top1[1] if parts["exit"] == 0 else top1[0], colour, *agent, parts["dir"], *goal]


def _script_crossing(parts):
    walls = list(parts["walls"])
    rivers = walls + [i for i in range(2 * len(CROSSING_LINES)) if i not in walls]
    num_x = sum(i < len(CROSSING_LINES) for i in walls)
    # Farama's path list is ["x"] * num_x + ["y"] * num_y; the permutation that orders it so.
    x_steps, y_steps = iter(range(num_x)), iter(range(num_x, len(walls)))
    path = [next(x_steps) if step == "x" else next(y_steps) for step in parts["path"]]
    offsets = [cell[1] if step == "x" else cell[0]
               for step, cell in zip(parts["path"], (parts["opening_1"], parts["opening_2"]),
                                     strict=True)]
    return [rivers, path, *offsets]


def _script_memory(parts):
    return [parts["agent_x"], 0 if parts["start"] == KEY else 1,
            0 if parts["upper"] == BALL else 1]


PARTS: dict[str, Callable[[dict[str, np.ndarray]], dict[str, Hashable]]] = {
    LAVA_GAP: _parts_lava_gap, RED_BLUE: _parts_red_blue, MEMORY: _parts_memory,
    DOOR_KEY: _parts_door_key, DIST_SHIFT: _parts_dist_shift, CROSSING: _parts_crossing,
    MULTI_ROOM: _parts_multi_room,
}
SCRIPTS: dict[str, Callable[[dict[str, Any]], list]] = {
    LAVA_GAP: lambda p: list(p["gap"]),
    RED_BLUE: lambda p: [*p["agent"], p["dir"], p["red"], p["blue"]],
    MEMORY: _script_memory,
    DOOR_KEY: lambda p: [p["split"], *p["agent"], p["dir"], p["door"], *p["key"]],
    DIST_SHIFT: lambda p: [],
    CROSSING: _script_crossing,
    MULTI_ROOM: _script_multi_room,
}
# Tasks with few distinct layouts, whose whole layout is compared as one statistic.
WHOLE_LAYOUT = (LAVA_GAP, MEMORY, DIST_SHIFT)


class ScriptedRandom:
    """Stands in for a Farama env's ``np_random``: returns the scripted draws in order, checking
    each against the range Farama asks for."""

    def __init__(self, draws: list):
        self.draws = list(draws)

    def integers(self, low: int, high: int) -> int:
        value = self.draws.pop(0)
        assert low <= value < high, (low, value, high)
        return value

    def choice(self, options):
        value = self.draws.pop(0)
        assert value in options, (value, options)
        return value

    def shuffle(self, items: list) -> None:
        order = self.draws.pop(0)
        assert sorted(order) == list(range(len(items))), (order, items)
        items[:] = [items[i] for i in order]


def _farama_layout(name: str, draws: list) -> dict[str, np.ndarray]:
    """Farama's reset of ``name`` with its random draws forced to ``draws``, transplanted."""
    env = gym.make(name).unwrapped
    env.reset(seed=0)
    env._np_random = ScriptedRandom(draws)
    env.reset()
    assert not env._np_random.draws, f"unused draws {env._np_random.draws}"
    return _host_one(state_from_farama(env, NAMES.index(name)))


def _signature(layout: dict[str, np.ndarray]) -> bytes:
    return b"".join(layout[k].tobytes() for k in ("grid", "agent_pos", "agent_dir", "marks"))


# --- structure ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layouts() -> dict[str, list[dict[str, np.ndarray]]]:
    """``PER_TASK`` JAX layouts of every task, from one call with a batch of tasks."""
    tasks = np.repeat(np.arange(len(NAMES), dtype=np.int32), PER_TASK)
    batch = _host(sample_tasks(jax.random.split(jax.random.PRNGKey(7), tasks.shape[0]), tasks))
    return {name: batch[i * PER_TASK:(i + 1) * PER_TASK] for i, name in enumerate(NAMES)}


@pytest.mark.parametrize("name", NAMES)
def test_every_layout_is_faramas_layout_of_its_draws(layouts, name):
    for layout in layouts[name]:
        farama = _farama_layout(name, SCRIPTS[name](PARTS[name](layout)))
        for field, value in farama.items():
            np.testing.assert_array_equal(layout[field], value, err_msg=f"{name} {field}")


@pytest.mark.parametrize("name", NAMES)
def test_layout_invariants(layouts, name):
    rules = TASK_RULES[name]
    for layout in layouts[name]:
        grid, (x, y) = layout["grid"], _agent(layout)
        assert grid[x, y, 0] == EMPTY and 0 <= layout["agent_dir"] < 4
        assert layout["step_count"] == 0 and not layout["carrying"].any()
        assert layout["task"] == NAMES.index(name)
        padding = np.ones(grid.shape[:2], dtype=bool)
        padding[:rules.width, :rules.height] = False
        assert (grid[padding, 0] == WALL).all()
        if name == RED_BLUE:
            (rx, ry), (bx, by) = layout["marks"]
            np.testing.assert_array_equal(grid[rx, ry], (DOOR, RED, CLOSED))
            np.testing.assert_array_equal(grid[bx, by], (DOOR, BLUE, CLOSED))
            assert bx - rx == rules.height - 1
        elif name == MEMORY:
            # Each mark is on the middle row's neighbour towards its object (above or below).
            mid = rules.height // 2
            (sx, sy), (fx, fy) = layout["marks"]
            assert sx == fx == rules.width - 2 and {sy, fy} == {mid - 1, mid + 1}
            start = grid[1, mid - 1]
            np.testing.assert_array_equal(grid[sx, sy + (sy - mid)], start)
            assert grid[fx, fy + (fy - mid), 0] == BALL + KEY - start[0]
        else:
            assert (layout["marks"] == -1).all()
        if name == MULTI_ROOM:  # the door is on both rooms' outlines
            parts = _parts_multi_room(layout)
            assert parts["room1"] in {(3, -1), (3, 0), (3, 1), (-1, 3), (0, 3), (1, 3),
                                      (-1, -3), (0, -3), (1, -3)}


def test_dist_shift_is_faramas_single_layout(layouts):
    env = gym.make(DIST_SHIFT).unwrapped
    env.reset(seed=3)
    farama = _host_one(state_from_farama(env, NAMES.index(DIST_SHIFT)))
    assert {_signature(layout) for layout in layouts[DIST_SHIFT]} == {_signature(farama)}


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="no JAX MiniGrid layout generator"):
        reset_state(("MiniGrid-Empty-5x5-v0",), jax.random.PRNGKey(0), 0)


# --- distributions ------------------------------------------------------------------------------


def _farama_sample(name: str, num: int, seed: int) -> list[dict[str, np.ndarray]]:
    env = gym.make(name).unwrapped
    env.reset(seed=seed)
    task = NAMES.index(name)
    out = []
    for _ in range(num):
        env.reset()
        out.append(_host_one(state_from_farama(env, task)))
    return out


@functools.cache
def _samples(name: str) -> tuple[list[dict], list[dict]]:
    """The random parts (and the whole-layout signature) of ``NUM_LAYOUTS`` Farama and JAX
    layouts of ``name`` (fixed seeds; computed once per process)."""
    task = NAMES.index(name)
    keys = jax.random.split(jax.random.PRNGKey(100 + task), NUM_LAYOUTS)
    samples = []
    for layouts in (_farama_sample(name, NUM_LAYOUTS, 200 + task),
                    _host(sample_task(keys, task))):
        parts = [PARTS[name](layout) for layout in layouts]
        stacked = GridState(**{f: np.stack([layout[f] for layout in layouts])
                               for f in layouts[0]})
        for p, steps in zip(parts, _optimized(shortest, stacked), strict=True):
            p["optimal_steps"] = int(steps)
        if name in WHOLE_LAYOUT:
            for p, layout in zip(parts, layouts, strict=True):
                p["layout"] = _signature(layout)
        samples.append(parts)
    return samples[0], samples[1]


def _optimized(function: Callable, *args: Any) -> np.ndarray:
    """``function(*args)`` compiled with XLA's optimisations, which the test suite turns off
    (``conftest.py``): the search over 2,000 layouts runs about 10x faster with them."""
    import jax._src.compiler  # noqa: F401  (defines the flag)

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        return np.asarray(function(*args))
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


def homogeneity_p(a: list[Hashable], b: list[Hashable]) -> float:
    """The chi-square test of homogeneity's p-value of two samples of categories, categories with
    fewer than ``MIN_COUNT`` samples in both together pooled into one (1.0 for one category)."""
    count_a, count_b = Counter(a), Counter(b)
    total = count_a + count_b
    common = [c for c in total if total[c] >= MIN_COUNT]
    rare = [c for c in total if total[c] < MIN_COUNT]
    rows = [[count[c] for c in common] + [sum(count[c] for c in rare)]
            for count in (count_a, count_b)]
    table = np.array(rows)[:, np.array(rows).sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(chi2_contingency(table, correction=False).pvalue)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_layout_distributions_match_faramas(name):
    farama, ours = _samples(name)
    assert farama[0].keys() == ours[0].keys()
    p_values = {stat: homogeneity_p([p[stat] for p in farama], [p[stat] for p in ours])
                for stat in farama[0]}
    assert min(p_values.values(), default=1.0) > P_MIN, p_values
    if name == DIST_SHIFT:
        assert {p["layout"] for p in farama} == {p["layout"] for p in ours}
        assert len({p["layout"] for p in ours}) == 1


@pytest.mark.slow
def test_batched_tasks_match_single_task_calls():
    """Under vmap with a batch of tasks every generator runs and the task's layout is selected:
    the layouts equal those of the single-task program on the same keys."""
    # The batch shapes of the other tests, so that neither program compiles again.
    singles = [_host(sample_task(jax.random.split(jax.random.PRNGKey(5 + task), NUM_LAYOUTS),
                                 task))[:PER_TASK] for task in range(len(NAMES))]
    keys = np.concatenate([np.asarray(jax.random.split(jax.random.PRNGKey(5 + task),
                                                       NUM_LAYOUTS))[:PER_TASK]
                           for task in range(len(NAMES))])
    tasks = np.repeat(np.arange(len(NAMES), dtype=np.int32), PER_TASK)
    batched = _host(sample_tasks(keys, tasks))
    for layout, single in zip(batched, (s for task in singles for s in task), strict=True):
        for field, value in single.items():
            np.testing.assert_array_equal(layout[field], value, err_msg=field)


@pytest.mark.slow
def test_chi_square_rejects_biased_door_key_layouts():
    """The test's power: DoorKey layouts with the wall column at x = 3 in 60% of the layouts
    (Farama: 50%), and with the door row drawn from [1, 5) instead of [1, 4), are rejected."""
    farama, ours = _samples(DOOR_KEY)
    right = [p for p in ours if p["split"] == 3]
    left = [p for p in ours if p["split"] == 2][: len(right) * 2 // 3]
    assert homogeneity_p([p["split"] for p in farama],
                         [p["split"] for p in right + left]) < P_MIN
    doors = np.random.default_rng(0).integers(1, 5, size=len(ours))
    assert homogeneity_p([p["door"] for p in farama], list(doors)) < P_MIN
