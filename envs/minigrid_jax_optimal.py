"""Shortest solutions of MiniGrid episodes in JAX: ``optimal_steps`` of a ``GridState``.

The JAX counterpart of ``minigrid_optimal.optimal_steps``: the length of a shortest sequence of
the searched actions (left, right, forward, pickup, toggle) that ends the episode of ``state``
with a reward, or -1 when none does within the ``max_steps - step_count`` steps left. It equals
the Farama search on the same layout for the seven tasks of ``minigrid_jax.TASK_RULES``; the best
return of a layout is ``minigrid_optimal.best_return(steps, max_steps)``, which works on arrays.

Search space. Besides the agent's direction and position, the searched actions can change only
an *aux state* in these tasks: whether the key is carried (DoorKey's key; drop is not searched,
so a picked-up key stays carried, and in Memory pickup acts as toggle, so nothing is picked up)
and the state of the one door that can change (DoorKey's door, MultiRoom's door, RedBlueDoors'
red door). RedBlueDoors' blue door never changes within the search: opening it ends the episode,
with the reward if the red door is open and without otherwise. Search states are therefore
``(door state, carried, direction, x, y)`` and a set of them is a boolean *reachability tensor*
of shape ``(3, 2, 4, GRID_SIZE, GRID_SIZE)``: ``reach[s, c, d, x, y]`` says that the agent can be
at ``(x, y)`` facing ``d`` with the door in state ``s`` (open 0, closed 1, locked 2) and the key
carried (``c = 1``) or not. Tasks without a changeable door or key keep their initial ``s`` and
``c`` throughout.

Layout. The cells the search needs are derived once from the grid and ``marks`` (traced values,
no Python branching on them), as (GRID_SIZE, GRID_SIZE) masks: the changeable door (RedBlueDoors:
``marks[0]``; otherwise the first door cell in the grid), the key (the first key cell, unless the
task is Memory or the hands are not empty), RedBlueDoors' blue door (``marks[1]``), goals, lava,
and Memory's success and failure cells (``marks[0]``, ``marks[1]``). Every other cell keeps its
Farama ``can_overlap`` for good; the door cell is passable exactly when the door is open and the
key cell exactly when the key is carried (its cell is then empty). The door opens when locked
only if the key is carried and has the door's colour. Layouts with a second changeable door or key
(none of the seven tasks has one) are outside this model.

Algorithm. Breadth-first relaxation, vectorised over all search states at once: level ``k`` holds
every state reachable in at most ``k`` steps without ending the episode. One level applies the
five actions to the whole tensor:

* left / right: the direction axis rolled by -1 / +1 (cyclic);
* forward: each direction's slice shifted one cell along that direction with zero fill (nothing
  wraps around the grid), kept where the target cell is passable under the slice's aux state;
* pickup: states with the key not carried and facing the key move to ``c = 1``;
* toggle: states facing the door change its state (open -> closed, closed -> open, locked ->
  open when carrying the matching key).

A level succeeds when a forward move enters a goal, a state facing the blue door has the red door
open (RedBlueDoors), or an action leaves the agent on Memory's success cell. Moves into lava and
any action leaving the agent on Memory's failure cell end the episode without reward: those
states are not added. A ``lax.while_loop`` adds levels until a success is reachable (the answer
is the number of levels), the reached set stops growing, or the level limit
``max_steps - step_count`` is hit (both -1). Under ``vmap`` the loop runs until every state of the
batch has stopped.

Shapes. ``state`` is one ``GridState`` (add a leading axis with ``vmap``); the result is an int32
scalar. A level costs a few elementwise operations over ``3 * 2 * 4 * 25 * 25`` booleans.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtrl_sparse.envs.minigrid_jax import (
    CLOSED,
    DIR_VEC,
    DOOR,
    GOAL,
    GRID_SIZE,
    KEY,
    LAVA,
    LOCKED,
    OPEN,
    RULE_MEMORY,
    RULE_RED_BLUE_DOORS,
    GridState,
    TaskTables,
)
from mtrl_sparse.envs.minigrid_jax import (
    passable as can_overlap,
)

NUM_DOOR_STATES = 3  # open, closed, locked
NUM_CARRIED = 2  # key not carried, carried


class SearchLayout(NamedTuple):
    """What the search needs of one layout; masks are (GRID_SIZE, GRID_SIZE) bool over ``(x, y)``.

    Attributes:
        passable: (3, 2, 1, GRID_SIZE, GRID_SIZE) bool, the cells a forward move may enter under
            each aux state ``(door state, carried)`` (goals and lava included).
        goal: cells whose entry is a success.
        lava: cells whose entry ends the episode without reward.
        win: Memory's success cell (ending any action there is a success).
        lose: Memory's failure cell (ending any action there ends the episode without reward).
        facing_key: (4, GRID_SIZE, GRID_SIZE) bool, cells from which direction ``d`` faces the key.
        facing_door: (4, GRID_SIZE, GRID_SIZE) bool, the same for the changeable door.
        facing_blue: (4, GRID_SIZE, GRID_SIZE) bool, the same for RedBlueDoors' blue door.
        can_unlock: () bool, the key (carried or in the grid) has the door's colour.
    """

    passable: jax.Array
    goal: jax.Array
    lava: jax.Array
    win: jax.Array
    lose: jax.Array
    facing_key: jax.Array
    facing_door: jax.Array
    facing_blue: jax.Array
    can_unlock: jax.Array


def _shift(a: jax.Array, dx: int, dy: int) -> jax.Array:
    """Zero-fill shift of the last two axes: ``out[..., x, y] = a[..., x - dx, y - dy]``, False
    where that index falls outside."""
    config = [(0, 0, 0)] * (a.ndim - 2) + [(dx, -dx, 0), (dy, -dy, 0)]
    return jax.lax.pad(a, jnp.zeros((), a.dtype), config)


def _facing(mask: jax.Array) -> jax.Array:
    """(4, G, G) bool: ``out[d, x, y]`` is ``mask`` at the cell in front of ``(x, y)`` facing
    ``d``, that is ``mask[x + dx_d, y + dy_d]`` (False outside)."""
    return jnp.stack([_shift(mask, -int(dx), -int(dy)) for dx, dy in DIR_VEC])


def _cell_mask(pos: jax.Array) -> jax.Array:
    """(G, G) bool, True at ``pos`` (x, y) only; all False for a position outside the grid."""
    xs = jnp.arange(GRID_SIZE)
    return (xs[:, None] == pos[0]) & (xs[None, :] == pos[1])


def _first_cell(mask: jax.Array) -> jax.Array:
    """(G, G) bool, True only at the first True cell of ``mask`` in flat order (none if none)."""
    flat = mask.reshape(-1)
    first = jnp.argmax(flat)
    return ((jnp.arange(flat.size) == first) & flat[first]).reshape(mask.shape)


def _masked_value(mask: jax.Array, values: jax.Array) -> jax.Array:
    """The int32 value of ``values`` (G, G) at the single True cell of ``mask`` (0 if none)."""
    return jnp.sum(jnp.where(mask, values.astype(jnp.int32), 0))


def _door_and_key(tables: TaskTables, state: GridState) -> tuple[jax.Array, jax.Array]:
    """Masks of the changeable door and of the key that can be picked up (possibly empty)."""
    rule = jnp.asarray(tables.rule)[state.task]
    kind = state.grid[..., 0]
    door = jnp.where(rule == RULE_RED_BLUE_DOORS, _cell_mask(state.marks[0]),
                     _first_cell(kind == DOOR))
    pickable = (rule != RULE_MEMORY) & (state.carrying[0] == 0)
    return door, _first_cell(kind == KEY) & pickable


def search_layout(tables: TaskTables, state: GridState) -> SearchLayout:
    """The ``SearchLayout`` of ``state``'s grid, marks and carried object (module docstring)."""
    rule = jnp.asarray(tables.rule)[state.task]
    kind, colour = state.grid[..., 0], state.grid[..., 1]
    door, key = _door_and_key(tables, state)
    static = can_overlap(state.grid) & ~door & ~key
    door_open = (jnp.arange(NUM_DOOR_STATES) == OPEN)[:, None, None, None]
    carried = (jnp.arange(NUM_CARRIED) == 1)[None, :, None, None]
    passable = static | (door & door_open) | (key & carried)
    holds_key = state.carrying[0] == KEY
    key_colour = jnp.where(holds_key, state.carrying[1].astype(jnp.int32),
                           _masked_value(key, colour))
    is_memory = rule == RULE_MEMORY
    return SearchLayout(
        passable=passable[:, :, None],
        goal=kind == GOAL,
        lava=kind == LAVA,
        win=_cell_mask(state.marks[0]) & is_memory,
        lose=_cell_mask(state.marks[1]) & is_memory,
        facing_key=_facing(key),
        facing_door=_facing(door),
        facing_blue=_facing(_cell_mask(state.marks[1]) & (rule == RULE_RED_BLUE_DOORS)),
        can_unlock=key_colour == _masked_value(door, colour),
    )


def initial_reach(tables: TaskTables, state: GridState) -> jax.Array:
    """(3, 2, 4, G, G) bool, holding only the search state of ``state``. Without a changeable
    door, the aux door state is 0 (any constant would do: nothing reads or changes it)."""
    door, _ = _door_and_key(tables, state)
    door_state = _masked_value(door, state.grid[..., 2])
    carried = (state.carrying[0] == KEY).astype(jnp.int32)
    reach = jnp.zeros((NUM_DOOR_STATES, NUM_CARRIED, 4, GRID_SIZE, GRID_SIZE), dtype=bool)
    return reach.at[door_state, carried, state.agent_dir, state.agent_pos[0],
                    state.agent_pos[1]].set(True)


def _forward(layout: SearchLayout, reach: jax.Array) -> jax.Array:
    """Where forward takes each state of ``reach``: every direction's slice shifted one cell that
    way (zero fill), kept on cells passable under the slice's aux state."""
    moved = jnp.stack([_shift(reach[:, :, d], int(dx), int(dy))
                       for d, (dx, dy) in enumerate(DIR_VEC)], axis=2)
    return moved & layout.passable


def _turn(reach: jax.Array) -> jax.Array:
    """Where left and right take each state of ``reach``: direction ``d`` to ``d -/+ 1 mod 4``."""
    return jnp.roll(reach, -1, axis=2) | jnp.roll(reach, 1, axis=2)


def _pickup(layout: SearchLayout, reach: jax.Array) -> jax.Array:
    """Where pickup takes the states of ``reach`` facing the key without carrying it: the same
    place and door state, the key carried (the other states are left out)."""
    picked = reach[:, 0] & layout.facing_key
    return jnp.stack([jnp.zeros_like(picked), picked], axis=1)


def _toggle(layout: SearchLayout, reach: jax.Array) -> jax.Array:
    """Where toggle takes the states of ``reach`` facing the changeable door: open -> closed,
    closed -> open, locked -> open with the matching key carried (the other states left out)."""
    facing = reach & layout.facing_door
    unlocks = facing[LOCKED] & (jnp.arange(NUM_CARRIED) == 1)[:, None, None, None]
    opened = facing[CLOSED] | (unlocks & layout.can_unlock)
    by_state = {OPEN: opened, CLOSED: facing[OPEN], LOCKED: jnp.zeros_like(opened)}
    return jnp.stack([by_state[s] for s in range(NUM_DOOR_STATES)])


def expand(layout: SearchLayout, reach: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One breadth-first level: ``(success, reach')``. ``success`` () bool: some state of ``reach``
    has an action that ends the episode with a reward; ``reach'`` adds to ``reach`` every state one
    action away whose step does not end the episode."""
    moved = _forward(layout, reach)
    stayed = _turn(reach) | _pickup(layout, reach) | _toggle(layout, reach)
    blue_opened = reach[OPEN] & layout.facing_blue  # the red door open: a success
    success = ((moved & layout.goal).any() | ((moved | stayed) & layout.win).any()
               | blue_opened.any())
    ended = layout.win | layout.lose
    new = (stayed & ~ended) | (moved & ~(ended | layout.goal | layout.lava))
    return success, reach | new


def optimal_steps(tables: TaskTables, state: GridState) -> jax.Array:
    """Length of a shortest successful action sequence from ``state``, () int32; -1 when there is
    none within ``max_steps - step_count`` steps. Equals ``minigrid_optimal.optimal_steps`` of the
    Farama env ``state`` was transplanted from (None there is -1 here). Pure; jit- and vmap-able.
    """
    layout = search_layout(tables, state)
    limit = jnp.asarray(tables.max_steps)[state.task] - state.step_count

    def searching(carry):
        level, _, found, grew = carry
        return ~found & grew & (level < limit)

    def level_up(carry):
        level, reach, _, _ = carry
        found, wider = expand(layout, reach)
        return level + 1, wider, found, (wider != reach).any()

    start = (jnp.int32(0), initial_reach(tables, state), jnp.bool_(False), jnp.bool_(True))
    level, _, found, _ = jax.lax.while_loop(searching, level_up, start)
    return jnp.where(found, level, -1).astype(jnp.int32)
