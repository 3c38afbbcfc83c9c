"""Where a sparse network keeps its weights, and how that changes: statistics of the masks.

Logged by the run loop at every evaluation as ``masks/...`` fields of the metrics rows (host-side
numpy on the masks fetched from the device; nothing runs inside the training program, so no number
of the run changes), and read back by the report (``mtrl_sparse.report_masks``):

* ``masks/<net>/density``: active weights / maskable weights of the network (masked leaves only:
  leaves without a mask, such as biases and norms, are always dense and left out);
* ``masks/<net>/<layer>/density``: the same for one masked leaf; for a leaf that stacks the
  per-task heads (``methods.topology.LayerSlices``), also ``.../density_per_task`` (T,): each
  task's slice separately;
* ``masks/<net>/changed`` and ``masks/<net>/<layer>/changed``: how much the topology moved since
  the previous measurement: the fraction of the weights active now that were not active then
  (0 for a mask that only shrinks, as GMP's; about the drop fraction per round for SET and RigL,
  whose grown weights replace as many dropped ones; not logged at a run's first measurement);
* for a stacked head layer whose tasks read the same inputs (the slices lie along the output axis:
  the first layer of the per-task heads, reading the trunk's features), the trunk features each
  task's head reads, i.e. the input rows of its slice holding an active weight:
  ``.../features_per_task`` (T,) their counts, ``.../features_jaccard`` the mean over task
  pairs of the Jaccard index |F_s & F_t| / |F_s | F_t| of the two feature sets, and
  ``.../features_jaccard_pairs`` the pairs' indices in the order (0, 1), (0, 2), ..., (T-2, T-1).
  Jaccard of feature sets, not of the tasks' weights, which are different parameters.

Layer names are the masked leaves' paths without the leading ``params/`` (``trunk/conv_0/kernel``).
"""

from __future__ import annotations

import base64
from itertools import combinations
from typing import Any

import jax
import numpy as np

from mtrl_sparse.agents.net_state import NetState
from mtrl_sparse.agents.tree_paths import key_name, path_str
from mtrl_sparse.agents.trees import is_none
from mtrl_sparse.methods.topology import LayerSlices, named_leaf_slices

PREFIX = "masks/"
NetworkMasks = dict[str, np.ndarray]
"""A network's masks by layer name: bool arrays of the leaves' shapes."""


def network_states(state: Any) -> dict[str, NetState]:
    """The ``NetState`` of every network in an agent's train state (a checkpoint's device state),
    by its field name (``actor``, ``critic``), in tree order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(
        state, is_leaf=lambda x: isinstance(x, NetState))
    return {key_name(path[-1]): leaf for path, leaf in flat if isinstance(leaf, NetState)}


def layer_masks(net: NetState) -> NetworkMasks:
    """The masked leaves of ``net`` on the host as bool arrays, by layer name; empty for a dense
    network (no masks)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(net.masks, is_leaf=is_none)
    masked = [(path, m) for path, m in flat if m is not None]
    values = jax.device_get([m for _, m in masked])
    return {path_str(path).removeprefix("params/"): np.asarray(value, dtype=bool)
            for (path, _), value in zip(masked, values, strict=True)}


def state_masks(state: Any) -> dict[str, NetworkMasks]:
    """``layer_masks`` of every network of ``state`` that has masks, by network name."""
    masks = {name: layer_masks(net) for name, net in network_states(state).items()}
    return {name: layers for name, layers in masks.items() if layers}


def task_slices(mask: np.ndarray, axis: int, count: int) -> np.ndarray:
    """A leaf stacking ``count`` layers along ``axis`` as (count, the slice's shape with the
    sliced axis first): one entry per task."""
    moved = np.moveaxis(mask, axis, 0)
    return moved.reshape(count, moved.shape[0] // count, *moved.shape[1:])


def input_features(task_masks: np.ndarray) -> np.ndarray:
    """(T, features) bool: for (T, out, in...) task slices of a layer stacked along its output
    axis (``task_slices`` with the last axis), which input features (the entries of the leading
    input axes, flattened) each task's slice reads through at least one active weight."""
    outputs_first = task_masks.reshape(task_masks.shape[0], task_masks.shape[1], -1)
    return outputs_first.any(axis=1)


def jaccard_pairs(features: np.ndarray) -> np.ndarray:
    """Jaccard index of every pair of tasks' feature sets, (T (T-1) / 2,) in the order of
    ``itertools.combinations``; 1 for two empty sets (they read the same: nothing)."""
    pairs = []
    for s, t in combinations(range(len(features)), 2):
        union = np.logical_or(features[s], features[t]).sum()
        both = np.logical_and(features[s], features[t]).sum()
        pairs.append(both / union if union else 1.0)
    return np.asarray(pairs, dtype=float)


def changed_fraction(now: np.ndarray, before: np.ndarray) -> tuple[int, int]:
    """(active now and inactive before, active now): the numerator and denominator of the
    topology's movement."""
    return int(np.logical_and(now, ~before).sum()), int(now.sum())


def layer_row(network: str, layer: str, mask: np.ndarray, previous: np.ndarray | None,
              layer_slices: LayerSlices) -> dict[str, Any]:
    """The ``masks/<network>/<layer>/...`` fields of one masked leaf (module docstring)."""
    key = f"{PREFIX}{network}/{layer}"
    row: dict[str, Any] = {f"{key}/density": float(mask.mean())}
    if previous is not None:
        grown, active = changed_fraction(mask, previous)
        row[f"{key}/changed"] = grown / active if active else 0.0
    slices = named_leaf_slices(layer, layer_slices)
    if slices is None:
        return row
    axis, count = slices
    per_task = task_slices(mask, axis, count)
    row[f"{key}/density_per_task"] = per_task.reshape(count, -1).mean(axis=1).tolist()
    if axis % mask.ndim == mask.ndim - 1 and count > 1:
        features = input_features(per_task)
        pairs = jaccard_pairs(features)
        row[f"{key}/features_per_task"] = features.sum(axis=1).tolist()
        row[f"{key}/features_jaccard"] = float(pairs.mean())
        row[f"{key}/features_jaccard_pairs"] = pairs.tolist()
    return row


def network_row(network: str, masks: NetworkMasks, previous: NetworkMasks | None,
                layer_slices: LayerSlices) -> dict[str, Any]:
    """Every ``masks/<network>/...`` field of one network's masks, given its masks at the
    previous measurement (None: none, no ``changed`` fields)."""
    row: dict[str, Any] = {
        f"{PREFIX}{network}/density":
            sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())}
    if previous is not None:
        counts = [changed_fraction(m, previous[layer]) for layer, m in masks.items()]
        active = sum(a for _, a in counts)
        row[f"{PREFIX}{network}/changed"] = sum(g for g, _ in counts) / active if active else 0.0
    for layer, mask in masks.items():
        before = None if previous is None else previous[layer]
        row.update(layer_row(network, layer, mask, before, layer_slices))
    return row


def masks_row(masks: dict[str, NetworkMasks], previous: dict[str, NetworkMasks] | None,
              layer_slices: LayerSlices) -> dict[str, Any]:
    """The ``masks/...`` fields of a metrics row for the networks' masks (``state_masks``) and
    those of the previous measurement (None at a run's first)."""
    row: dict[str, Any] = {}
    for network, layers in masks.items():
        before = None if previous is None else previous.get(network)
        row.update(network_row(network, layers, before, layer_slices))
    return row


def per_task_labels(task_names: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """TensorBoard labels of the per-task list fields (by the last part of their names)."""
    return {"density_per_task": task_names, "features_per_task": task_names}


def split_runs(masks: dict[str, NetworkMasks], runs: int) -> list[dict[str, NetworkMasks]]:
    """The ``state_masks`` of a vmapped group's stacked state (a leading run axis on every
    array) as one entry per run."""
    return [{net: {layer: m[k] for layer, m in layers.items()} for net, layers in masks.items()}
            for k in range(runs)]


def pack_masks(masks: dict[str, NetworkMasks]) -> dict[str, Any]:
    """``state_masks`` as JSON (bits packed, base64): what a checkpoint keeps of the masks of
    the last measurement, so that a resumed run measures ``changed`` against the same masks."""
    return {net: {layer: {"shape": list(m.shape),
                          "bits": base64.b64encode(np.packbits(m)).decode("ascii")}
                  for layer, m in layers.items()}
            for net, layers in masks.items()}


def unpack_masks(packed: dict[str, Any]) -> dict[str, NetworkMasks]:
    """The inverse of ``pack_masks``."""
    def unpack(entry: dict[str, Any]) -> np.ndarray:
        shape = tuple(entry["shape"])
        bits = np.frombuffer(base64.b64decode(entry["bits"]), dtype=np.uint8)
        return np.unpackbits(bits, count=int(np.prod(shape))).astype(bool).reshape(shape)
    return {net: {layer: unpack(entry) for layer, entry in layers.items()}
            for net, layers in packed.items()}
