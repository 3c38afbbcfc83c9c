"""Shortest solutions of MiniGrid episodes and the normalised return built on them.

The evaluation metric of the reference paper (Todorov et al., TMLR 2025, arXiv 2508.06871) is the
*normalised return*: an episode's return divided by the best return achievable in that episode's
layout. MiniGrid pays ``1 - 0.9 * step_count / max_steps`` on success and 0 otherwise
(``MiniGridEnv._reward``), so the best return belongs to the shortest successful action sequence:

    best_return(n, max_steps) = 1 - 0.9 * n / max_steps,     n = optimal_steps(env).

``optimal_steps`` finds ``n`` by breadth-first search over the primitive actions that change the
world (left, right, forward, pickup, toggle; drop and done are left out) from the env's current
state, normally right after ``reset``. Every expansion runs the env's **own** ``step`` on a private
copy, so each task's rules decide what counts: a success is a step that returns a reward > 0 (goal
reached, matching object in Memory, blue door opened after the red one in RedBlueDoors); a step
that terminates with reward 0 (lava, wrong object, wrong door order) is a dead end and is not
expanded. The search stops at the time limit: a layout not solvable in the remaining steps gives
``None``.

Speed. Deep-copying the env per expansion costs about 0.5 ms, so the search deep-copies it once and
then snapshots and restores only what the five actions can change: the agent's position, direction
and carried object, the step counter, the grid's cell list and the attributes of its non-static
objects (doors, keys, balls, boxes). Walls, floor, goals, lava and empty cells never change under
these actions (only ``drop`` fills an empty cell). The copy's ``gen_obs`` is replaced by a no-op:
no task's ``step`` reads the observation, and rendering it dominates the cost of a step. States are
identified by the agent's position and direction, the carried object's (type, colour) and the
encoding of every cell that holds or held a non-static object, which is the whole grid encoding
minus cells that cannot change.

Because every successful episode takes at least ``n`` steps, its return is at most
``best_return(n, max_steps)``: the normalised return of an episode never exceeds 1 (up to float
rounding, as MiniGrid computes its reward in float64 and the vector env hands it on in float32).
"""

from __future__ import annotations

import copy
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Farama's minigrid is optional (the farama extra): the search runs on its envs
    from minigrid.minigrid_env import MiniGridEnv

# The actions the search expands, in this order (ties between shortest paths go to the first):
# MiniGrid's Actions.left, right, forward, pickup and toggle (see the module docstring).
SEARCH_ACTIONS = (0, 1, 2, 3, 5)

# Object types that no searched action can change (never picked up, toggled or moved).
_STATIC_TYPES = frozenset({"wall", "floor", "goal", "lava"})


def best_return(steps: Any, max_steps: Any) -> Any:
    """MiniGrid's success reward after ``steps`` steps, ``1 - 0.9 * steps / max_steps``, with its
    operation order (so that it equals the env's reward exactly); elementwise on arrays."""
    return 1 - 0.9 * (steps / max_steps)


def normalised_return(episode_return: float, steps: int | None, max_steps: int) -> float:
    """``episode_return / best_return(steps, max_steps)``; NaN when the layout is unsolvable
    (``steps`` is None). At most 1 up to float rounding (see the module docstring)."""
    if steps is None:
        return float("nan")
    return float(episode_return) / best_return(steps, max_steps)


def _dynamic_objects(env: MiniGridEnv) -> list[Any]:
    """Objects whose attributes an action may change: every non-static object in the grid, the
    carried one and, recursively, the contents of boxes."""
    found, stack = [], [c for c in env.grid.grid if c is not None] + [env.carrying]
    while stack:
        obj = stack.pop()
        if obj is None or obj.type in _STATIC_TYPES or any(obj is o for o in found):
            continue
        found.append(obj)
        stack.append(getattr(obj, "contains", None))
    return found


def _snapshot(env: MiniGridEnv, objects: list[Any]) -> tuple:
    """Everything the searched actions can change, as restorable values."""
    return (
        tuple(env.agent_pos),
        env.agent_dir,
        env.carrying,
        env.step_count,
        list(env.grid.grid),
        [dict(vars(obj)) for obj in objects],
    )


def _restore(env: MiniGridEnv, objects: list[Any], snapshot: tuple) -> None:
    """Put ``env`` back into the state ``snapshot`` was taken in."""
    pos, env.agent_dir, env.carrying, env.step_count, cells, attributes = snapshot
    env.agent_pos = pos
    env.grid.grid[:] = cells
    for obj, attrs in zip(objects, attributes, strict=True):
        vars(obj).update(attrs)


def _state_key(env: MiniGridEnv, cells: tuple[int, ...]) -> Hashable:
    """Identity of a search state: agent position and direction, carried (type, colour) and the
    encoding of the grid cells listed in ``cells`` (flat indices of every cell that can change)."""
    carrying = env.carrying
    grid = env.grid.grid
    return (
        int(env.agent_pos[0]),
        int(env.agent_pos[1]),
        int(env.agent_dir),
        None if carrying is None else (carrying.type, carrying.color),
        tuple(None if grid[i] is None else grid[i].encode() for i in cells),
    )


def _search_copy(env: Any) -> MiniGridEnv:
    """A private copy of the unwrapped env whose ``step`` skips rendering the observation."""
    work = copy.deepcopy(env.unwrapped)
    work.gen_obs = lambda: None
    work.render_mode = None
    return work


def solution_actions(env: Any) -> list[int] | None:
    """A shortest action sequence that solves ``env``'s episode from its current state, or None
    when no sequence of ``SEARCH_ACTIONS`` succeeds within the steps left before the time limit.

    ``env`` (a MiniGrid env, wrapped or not) is not modified. Replaying the actions on an env in
    the same state (e.g. reset with the same seed) succeeds on the last action, and not before.
    """
    work = _search_copy(env)
    objects = _dynamic_objects(work)
    dynamic = {id(obj) for obj in objects}
    cells = tuple(i for i, cell in enumerate(work.grid.grid) if id(cell) in dynamic)
    seen = {_state_key(work, cells)}
    # Breadth-first, one depth level at a time; a node is (snapshot, index of parent, action).
    nodes: list[tuple[Any, int, int]] = [(_snapshot(work, objects), -1, -1)]
    frontier = [0]
    for _ in range(work.max_steps - work.step_count):
        next_frontier = []
        for parent in frontier:
            for action in SEARCH_ACTIONS:
                _restore(work, objects, nodes[parent][0])
                _, reward, terminated, _, _ = work.step(action)
                if reward > 0:
                    return _path(nodes, parent) + [int(action)]
                key = _state_key(work, cells)
                if terminated or key in seen:
                    continue
                seen.add(key)
                nodes.append((_snapshot(work, objects), parent, int(action)))
                next_frontier.append(len(nodes) - 1)
        if not next_frontier:
            return None
        frontier = next_frontier
    return None


def _path(nodes: list[tuple[Any, int, int]], index: int) -> list[int]:
    """Actions from the root to node ``index``, following parent links."""
    actions = []
    while nodes[index][1] >= 0:
        actions.append(nodes[index][2])
        index = nodes[index][1]
    return actions[::-1]


def optimal_steps(env: Any) -> int | None:
    """Length of a shortest solution of ``env``'s episode from its current state (see
    ``solution_actions``); None when it cannot be solved before the time limit."""
    actions = solution_actions(env)
    return None if actions is None else len(actions)
