"""The report's section on the masks: where the sparse groups keep their weights, and how that
changes over training, from the ``masks/...`` fields the runs log at every evaluation
(``mtrl_sparse.mask_stats``).

* a table per group and network at the end of training: density, the topology's movement at the
  last evaluation, and for the per-task heads the trunk features each task reads and their
  overlap between tasks (mean pairwise Jaccard), each the mean over the group's finished runs;
* figures (matplotlib, the ``report`` extra): each layer's density over training, one figure per
  network, a stacked head layer's tasks in panels of their own; the topology's movement
  (fraction of active weights newly active since the previous evaluation); the heads' feature
  overlap over training and, at the end, as a task x task matrix per group.

Curves are the mean over a group's finished runs with a band from the lowest to the highest run,
at the evaluation steps all of them logged. Dense groups log no masks and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from mtrl_sparse.mask_stats import PREFIX
from mtrl_sparse.report_figures import (
    Curve,
    FigureNote,
    curve_panels_figure,
    file_stem,
    new_figure,
    save_figure,
    series_colours,
    short_task,
    suptitle,
)
from mtrl_sparse.report_series import align, step_series


@dataclass(frozen=True)
class MaskGroup:
    """A group's finished runs as the mask section needs them."""

    name: str
    """The group's short name (``gmp 0.95``)."""
    sparsity: float
    tasks: tuple[str, ...]
    runs: tuple[tuple[dict[str, Any], ...], ...]
    """Each finished run's ``mask_rows``, spread once when the group is made."""


def mask_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows holding ``masks/...`` fields, those fields only (with ``step``), list values
    spread into ``<name>[<i>]`` entries so that every value is a number."""
    spread = []
    for row in rows:
        fields = {k: v for k, v in row.items() if k.startswith(PREFIX)}
        if not fields:
            continue
        flat: dict[str, Any] = {"step": row["step"]}
        for name, value in fields.items():
            if isinstance(value, list):
                flat.update({f"{name}[{i}]": v for i, v in enumerate(value)})
            else:
                flat[name] = value
        spread.append(flat)
    return spread


def logged_keys(group: MaskGroup, suffix: str) -> list[str]:
    """The ``masks/...`` names ending in ``suffix`` that every run of ``group`` logs, in the
    order the first run logs them."""
    per_run = [list(dict.fromkeys(k for r in rows for k in r if k.endswith(suffix)))
               for rows in group.runs]
    common = set.intersection(*map(set, per_run)) if per_run else set()
    return [k for k in per_run[0] if k in common] if per_run else []


def group_curve(group: MaskGroup, key: str) -> Curve | None:
    """``key`` over training for ``group``: mean over its runs, band from the lowest to the
    highest run; None where the runs share no step logging it."""
    steps, values = align([step_series(rows, [key]) for rows in group.runs])
    if not len(steps):
        return None
    values = values[..., 0]  # (runs, T)
    return Curve(name=group.name, series=group.name, sparsity=group.sparsity, dense=False,
                 steps=steps, center=values.mean(axis=0), low=values.min(axis=0),
                 high=values.max(axis=0))


def final_value(group: MaskGroup, key: str) -> float | None:
    """The mean over ``group``'s runs of the last value each logged of ``key``."""
    finals = []
    for rows in group.runs:
        steps, values = step_series(rows, [key])
        if not len(steps):
            return None
        finals.append(values[-1, 0])
    return float(np.mean(finals))


TASK_DENSITY = "/density_per_task"


def network_of(key: str) -> str:
    """``masks/<network>/...`` -> ``<network>``."""
    return key.removeprefix(PREFIX).split("/", 1)[0]


def layer_of(key: str, suffix: str) -> str:
    """``masks/<network>/<layer><suffix>`` -> ``<layer>``."""
    return key.removeprefix(PREFIX).split("/", 1)[1].removesuffix(suffix)


# ----------------------------------------------------------------------------- the table


def masks_section(groups: list[MaskGroup]) -> list[str]:
    """The report's Masks section: a row per sparse group and network (module docstring)."""
    lines = ["## Masks", ""]
    groups = [g for g in groups if logged_keys(g, "/density")]
    if not groups:
        return [*lines, "No finished run logs its masks' statistics (dense runs have no masks; "
                "runs from before masks were measured at evaluations log none).", ""]
    lines += ["At the end of training, mean over each group's finished runs: the density of the "
              "network's maskable weights, the fraction of its active weights newly active since "
              "the previous evaluation (topology moved), and per stacked head layer that reads "
              "the trunk, the trunk features each task's head reads (mean over tasks) and the "
              "mean Jaccard index of those feature sets over task pairs.", "",
              "| group | network | density | topology moved | head layer | features per task "
              "| features Jaccard |", "|---|---|---|---|---|---|---|"]
    for group in groups:
        networks = [k for k in logged_keys(group, "/density") if k.count("/") == 2]
        for network_key in networks:
            network = network_of(network_key)
            moved = final_value(group, f"{PREFIX}{network}/changed")
            heads = [k for k in logged_keys(group, "/features_jaccard")
                     if network_of(k) == network] or [None]
            for jaccard_key in heads:
                cells = [group.name, network, f"{final_value(group, network_key):.4f}",
                         "n/a" if moved is None else f"{moved:.4f}"]
                if jaccard_key is None:
                    cells += ["-", "-", "-"]
                else:
                    layer = layer_of(jaccard_key, "/features_jaccard")
                    counts = [final_value(group, k) for k in logged_keys(
                        group, "") if k.startswith(f"{PREFIX}{network}/{layer}/features_per_task[")]
                    cells += [layer, f"{np.mean(counts):.1f}",
                              f"{final_value(group, jaccard_key):.3f}"]
                lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


# ----------------------------------------------------------------------------- figures


def mask_notes(groups: list[MaskGroup], out_dir: Path) -> list[FigureNote]:
    """Draw and write the mask figures; a note per figure (or why it was skipped)."""
    groups = [g for g in groups if logged_keys(g, "/density")]
    if not groups:
        return [FigureNote("Masks", skipped="no finished run logs its masks' statistics (dense "
                           "runs have no masks)")]
    colours = series_colours([(g.name, False) for g in groups])
    return [density_note(groups, colours, out_dir), changed_note(groups, colours, out_dir),
            *features_notes(groups, colours, out_dir)]


def density_panels(groups: list[MaskGroup], network: str) -> dict[str, list[Curve]]:
    """Panel title -> curves of one network's per-layer density: a panel per layer, and for a
    stacked head layer, a panel per task's slice as well."""
    panels: dict[str, list[Curve]] = {}
    for group in groups:
        titled = [(layer_of(k, "/density"), k) for k in logged_keys(group, "/density")
                  if network_of(k) == network and k.count("/") > 2]
        for key in logged_keys(group, "]"):
            if network_of(key) == network and TASK_DENSITY in key:
                layer_key, index = key.rsplit("[", 1)
                task = group.tasks[int(index.rstrip("]"))]
                titled.append((f"{layer_of(layer_key, TASK_DENSITY)} [{short_task(task)}]", key))
        for title, key in titled:
            curve = group_curve(group, key)
            if curve is not None:
                panels.setdefault(title, []).append(curve)
    return panels


def density_note(groups: list[MaskGroup], colours: dict[str, Any], out_dir: Path) -> FigureNote:
    """One figure per network: each layer's density over training (``density_panels``)."""
    networks = list(dict.fromkeys(network_of(k) for g in groups
                                  for k in logged_keys(g, "/density") if k.count("/") == 2))
    stems = []
    for network in networks:
        figure = curve_panels_figure(
            density_panels(groups, network), colours, "density (active / maskable)",
            f"Density of the {network}'s masks per layer over training (mean over seeds, band: "
            "lowest to highest seed)")
        stem = f"mask_density_{file_stem(network)}"
        save_figure(figure, out_dir, stem)
        stems.append(stem)
    return FigureNote("Density of the masks over training", tuple(stems), (
        "Per network, each masked layer's density (active weights / maskable weights) at every "
        "evaluation; a layer stacking the per-task heads also in one panel per task's slice."))


def changed_note(groups: list[MaskGroup], colours: dict[str, Any], out_dir: Path) -> FigureNote:
    """The topology's movement over training, a panel per network."""
    title = "Topology's movement over training"
    panels: dict[str, list[Curve]] = {}
    for group in groups:
        for key in logged_keys(group, "/changed"):
            if key.count("/") == 2:
                curve = group_curve(group, key)
                if curve is not None:
                    panels.setdefault(network_of(key), []).append(curve)
    if not panels:
        return FigureNote(title, skipped="the runs logged a single mask measurement each")
    figure = curve_panels_figure(
        panels, colours, "active weights newly active (fraction)",
        "Topology's movement since the previous evaluation (mean over seeds, band: lowest to "
        "highest seed)")
    save_figure(figure, out_dir, "mask_changed")
    return FigureNote(title, ("mask_changed",), (
        "Per network, the fraction of its active weights that were inactive at the previous "
        "evaluation: zero for masks that only shrink (GMP), about the drop fraction for "
        "prune-and-regrow methods (SET, RigL), bursts where a method rewires at events."))


def features_notes(groups: list[MaskGroup], colours: dict[str, Any],
                   out_dir: Path) -> list[FigureNote]:
    """The per-task heads' trunk features: their overlap over training, and at the end as a
    task x task matrix per group and head layer."""
    title = "Trunk features read by each task's head"
    keyed = [(g, k) for g in groups for k in logged_keys(g, "/features_jaccard")]
    if not keyed:
        return [FigureNote(title, skipped="no run logs stacked per-task head layers")]
    panels: dict[str, list[Curve]] = {}
    for group, key in keyed:
        curve = group_curve(group, key)
        if curve is not None:
            name = f"{network_of(key)}: {layer_of(key, '/features_jaccard')}"
            panels.setdefault(name, []).append(curve)
    figure = curve_panels_figure(
        panels, colours, "mean Jaccard of task pairs' feature sets",
        "Overlap of the trunk features the tasks' heads read (mean over seeds, band: lowest to "
        "highest seed)", ylim=(-0.02, 1.02))
    save_figure(figure, out_dir, "head_features")
    matrices = figure_of_final_overlaps(keyed)
    save_figure(matrices, out_dir, "head_features_final")
    return [FigureNote(title, ("head_features", "head_features_final"), (
        "Per stacked head layer reading the trunk: the mean over task pairs of the Jaccard index "
        "of the trunk features each task's slice reads through an active weight, over training; "
        "then at the end of training, task x task, mean over seeds (the diagonal is 1)."))]


def final_overlap(group: MaskGroup, key: str) -> np.ndarray:
    """(T, T) final Jaccard matrix of a head layer (``key``: its ``features_jaccard`` name),
    mean over the group's runs; 1 on the diagonal."""
    tasks = len(group.tasks)
    pairs_key = f"{key}_pairs"
    matrix = np.eye(tasks)
    for index, (s, t) in enumerate(combinations(range(tasks), 2)):
        value = final_value(group, f"{pairs_key}[{index}]")
        matrix[s, t] = matrix[t, s] = np.nan if value is None else value
    return matrix


def figure_of_final_overlaps(keyed: list[tuple[MaskGroup, str]]) -> Any:
    """A panel per (group, head layer): the final task x task Jaccard matrix, annotated."""
    figure, axes = new_figure(len(keyed))
    for ax, (group, key) in zip(axes, keyed, strict=True):
        matrix = final_overlap(group, key)
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        for (row, column), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(column, row, f"{value:.2f}", ha="center", va="center",
                        fontsize="small", color="white" if value < 0.6 else "black")
        names = [short_task(t) for t in group.tasks]
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right",
                      rotation_mode="anchor")
        ax.set_yticks(range(len(names)), names)
        ax.set_title(f"{group.name}: {network_of(key)} {layer_of(key, '/features_jaccard')}",
                     fontsize="medium")
        figure.colorbar(image, ax=ax, label="Jaccard of the feature sets")
    suptitle(figure, "Overlap of the trunk features read by each pair of tasks' heads at the end "
                     "of training (mean over seeds)")
    return figure
