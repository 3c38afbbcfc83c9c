"""The figures of a sweep report (``mtrl_sparse.report.write_report``), drawn with matplotlib.

matplotlib (the ``report`` extra) is imported inside the functions that draw, so that
``mtrl_sparse.report`` imports, and writes reports without figures, where it is not installed.
Figures are ``matplotlib.figure.Figure`` objects on the Agg canvas, never ``pyplot`` ones: no
global figure registry, no backend switch. Every figure has a title, axis labels with units and a
legend (the heat map: a colour bar); scores are in [0, 1] and x axes count env steps.

The functions take plain data (``Curve``, ``FinalPoint``, arrays) computed by
``mtrl_sparse.report``; none of them reads run directories.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORMATS = ("png", "svg")
"""Every figure is written in each of these formats."""
DPI = 120
"""Resolution of the PNG files."""
DENSE_COLOURS = ("black", "dimgray", "darkgray")
"""Colours of dense series (the reference), in order of appearance."""
PANEL_SIZE = (5.2, 3.8)
"""Width and height of one panel, in inches."""
MAX_COLUMNS = 3
"""Panels per row of a multi-panel figure."""
PLASTICITY_LABELS = {
    "dormant_fraction": ("dormant fraction", "dormant neurons / alive neurons (in [0, 1])"),
    "srank": ("effective rank (srank)", "srank (dimensions)"),
    "fisher_trace": ("Fisher trace", "trace of the policy's Fisher (nats² / param²)"),
}
"""Panel title and y-axis label of each plasticity metric (the last part of its name)."""


@dataclass(frozen=True)
class FigureNote:
    """A figure of the report: the files written (stems, one PNG and one SVG each) and what they
    show, or why it was skipped."""

    title: str
    stems: tuple[str, ...] = ()
    caption: str = ""
    skipped: str | None = None


@dataclass(frozen=True)
class Curve:
    """One group's line over training with its band: ``steps``, ``center``, ``low`` and ``high``
    are (T,) arrays, steps in env steps."""

    name: str
    """The group, e.g. ``gmp 0.95`` (legend of figures mixing sparsities)."""
    series: str
    """The group without its sparsity, e.g. ``gmp`` (legend of a single sparsity's panel)."""
    sparsity: float
    dense: bool
    steps: np.ndarray
    center: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class FinalPoint:
    """One group's final IQM and its interval."""

    name: str
    series: str
    sparsity: float
    dense: bool
    iqm: float
    low: float
    high: float


def new_figure(panels: int) -> tuple[Figure, list[Axes]]:
    """A figure on the Agg canvas with ``panels`` axes in rows of at most ``MAX_COLUMNS``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(panels, MAX_COLUMNS)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows + 0.4),
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, axes[:panels]


def suptitle(figure: Figure, text: str) -> None:
    """The figure's title, wrapped to the figure's width (about 11 characters per inch)."""
    width = int(figure.get_figwidth() * 11)
    figure.suptitle("\n".join(textwrap.wrap(text, width)))


def save_figure(figure: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``figure`` as ``<out_dir>/<stem>.png`` and ``.svg`` (no date in the SVG, so the same
    data gives the same file); the paths written."""
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{stem}.{fmt}"
        figure.savefig(path, format=fmt, dpi=DPI,
                       metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    return paths


def file_stem(text: str) -> str:
    """``text`` as a file name stem: runs of other characters than letters, digits, ``.+-``
    become ``_``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "group"


def series_colours(series: Sequence[tuple[str, bool]]) -> dict[str, Any]:
    """A colour per series name from ``(series, dense)`` pairs: greys for dense series, the
    ``tab10`` cycle for the others, in order of first appearance."""
    import matplotlib

    cycle = matplotlib.colormaps["tab10"].colors
    colours: dict[str, Any] = {}
    dense_seen = sparse_seen = 0
    for name, dense in series:
        if name in colours:
            continue
        if dense:
            colours[name] = DENSE_COLOURS[dense_seen % len(DENSE_COLOURS)]
            dense_seen += 1
        else:
            colours[name] = cycle[sparse_seen % len(cycle)]
            sparse_seen += 1
    return colours


def sparsity_colours(levels: Sequence[float]) -> dict[float, Any]:
    """A colour per sparsity level along ``viridis`` (sparser: lighter), stopping short of its
    pale yellow end so that lines stay visible on white."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    ordered = sorted(set(levels))
    if len(ordered) == 1:
        return {ordered[0]: cmap(0.35)}
    return {level: cmap(0.8 * i / (len(ordered) - 1)) for i, level in enumerate(ordered)}


def format_steps(ax: Axes) -> None:
    """Env steps on the x axis with engineering prefixes (200k, 2M)."""
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel("env steps")


def draw_band(ax: Axes, curve: Curve, colour: Any, label: str) -> None:
    """``curve`` as a line with a translucent band; dense curves dashed."""
    ax.fill_between(curve.steps, curve.low, curve.high, color=colour, alpha=0.2, linewidth=0)
    ax.plot(curve.steps, curve.center, color=colour, label=label,
            linestyle="--" if curve.dense else "-", linewidth=1.6,
            marker="o" if len(curve.steps) == 1 else None)


def learning_curves_figure(curves: Sequence[Curve], score_label: str,
                           confidence: float) -> Figure:
    """One panel per sparsity level of the sparse groups, each with those groups and every dense
    group (a single panel when there are only dense groups): IQM of the score over env steps with
    its interval as a band."""
    dense = [c for c in curves if c.dense]
    sparse = [c for c in curves if not c.dense]
    levels: list[float | None] = sorted({c.sparsity for c in sparse}) or [None]
    colours = series_colours([(c.series, c.dense) for c in (*dense, *sparse)])
    figure, axes = new_figure(len(levels))
    for ax, level in zip(axes, levels, strict=True):
        for curve in (*dense, *(c for c in sparse if c.sparsity == level)):
            draw_band(ax, curve, colours[curve.series], curve.series)
        ax.set_title("dense" if level is None else f"sparsity {level:g}")
        format_steps(ax)
        ax.set_ylabel(f"IQM {score_label} (in [0, 1])")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    suptitle(figure, f"Learning curves: IQM of the {score_label} over runs x tasks, "
                    f"{confidence:.0%} stratified-bootstrap band"
                    + (" (dense in every panel)" if dense and len(levels) > 1 else ""))
    return figure


def draw_after_each_task(ax: Axes, curves: Sequence[Curve], colours: dict[str, Any],
                         tasks: Sequence[str], ylabel: str) -> None:
    """Curves over a sequential schedule's tasks (``curve.steps`` the task indices) on ``ax``,
    a share in [0, 1] on the y axis."""
    for curve in curves:
        draw_band(ax, curve, colours[curve.name], curve.name)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{i + 1}. {short_task(t)}" for i, t in enumerate(tasks)],
                       rotation=30, ha="right", fontsize="small")
    ax.set_xlabel("after training task")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")


def phase_average_figure(curves: Sequence[Curve], tasks: Sequence[str], score_label: str,
                         confidence: float) -> Figure:
    """Continual World's average performance after each task of a sequential schedule: one line
    per group over the tasks (``curve.steps`` the task indices 0..N-1), the mean over its runs of
    the average score of the tasks seen so far, with its interval as a band."""
    figure, (ax,) = new_figure(1)
    colours = series_colours([(c.name, c.dense) for c in curves])
    draw_after_each_task(ax, curves, colours, tasks, f"mean {score_label} of the tasks so far")
    suptitle(figure, f"Average performance after each task (mean over runs, {confidence:.0%} "
                     "bootstrap band)")
    return figure


def frozen_share_figure(panels: dict[str, list[Curve]], tasks: Sequence[str],
                        confidence: float) -> Figure:
    """The share of a network's trunk that a freezing method (IBM) has frozen after each task
    but the last: one panel per network, one line per group (``curve.steps`` the task indices
    0..N-2), mean over its runs with its interval as a band."""
    figure, axes = new_figure(len(panels))
    names = [c.name for curves in panels.values() for c in curves]
    colours = series_colours([(n, False) for n in dict.fromkeys(names)])
    for ax, (network, curves) in zip(axes, panels.items(), strict=True):
        draw_after_each_task(ax, curves, colours, tasks[:-1],
                             f"{network}: share of the trunk frozen")
    suptitle(figure, f"Trunk frozen after each task (mean over runs, {confidence:.0%} bootstrap "
                     "band)")
    return figure


def short_task(task: str) -> str:
    """A task name without its benchmark's prefix and version (``DoorKey-6x6``)."""
    return re.sub(r"^MiniGrid-|-v\d+$", "", task)


def final_vs_sparsity_figure(points: Sequence[FinalPoint], score_label: str,
                             confidence: float) -> Figure:
    """Final IQM against sparsity: a line with interval error bars per sparse series, each dense
    group as a horizontal band (its interval) around a line (its IQM)."""
    figure, (ax,) = new_figure(1)
    colours = series_colours([(p.series, p.dense) for p in points])
    for point in (p for p in points if p.dense):
        ax.axhspan(point.low, point.high, color=colours[point.series], alpha=0.15, linewidth=0,
                   label=f"{point.series}: {confidence:.0%} CI")
        ax.axhline(point.iqm, color=colours[point.series], linestyle="--", linewidth=1.2,
                   label=f"{point.series}: IQM")
    sparse = [p for p in points if not p.dense]
    for series in dict.fromkeys(p.series for p in sparse):
        line = sorted((p for p in sparse if p.series == series), key=lambda p: p.sparsity)
        x = np.array([p.sparsity for p in line])
        y = np.array([p.iqm for p in line])
        errors = np.array([[max(p.iqm - p.low, 0.0) for p in line],
                           [max(p.high - p.iqm, 0.0) for p in line]])
        ax.errorbar(x, y, yerr=errors, color=colours[series], marker="o", capsize=4,
                    linewidth=1.6, label=series)
    levels = sorted({p.sparsity for p in sparse})
    ax.set_xticks(levels, [f"{s:g}" for s in levels])
    ax.set_xlabel("sparsity (fraction of weights pruned)")
    ax.set_ylabel(f"final IQM {score_label} (in [0, 1])")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    ax.set_title(f"Final {score_label} against sparsity\n(IQM over runs x tasks, "
                 f"{confidence:.0%} stratified-bootstrap CI)")
    return figure


def plasticity_figure(series: str, panels: dict[tuple[str, str], list[Curve]]) -> Figure:
    """Plasticity metrics of one sparse series (or the dense groups) over training: one panel per
    ``(network, metric)``, one line per group (mean over seeds, band from the lowest to the
    highest seed), coloured by sparsity, dense dashed in black."""
    figure, axes = new_figure(len(panels))
    levels = [c.sparsity for curves in panels.values() for c in curves if not c.dense]
    colours = sparsity_colours(levels) if levels else {}
    dense_colours = series_colours([(c.series, True) for curves in panels.values()
                                    for c in curves if c.dense])
    for ax, ((network, metric), curves) in zip(axes, panels.items(), strict=True):
        title, ylabel = PLASTICITY_LABELS.get(metric, (metric, metric))
        for curve in curves:
            colour = dense_colours[curve.series] if curve.dense else colours[curve.sparsity]
            draw_band(ax, curve, colour, curve.name)
        ax.set_title(f"{network}: {title}")
        format_steps(ax)
        ax.set_ylabel(ylabel)
        if metric == "fisher_trace" and wide_positive_range(curves):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    suptitle(figure, f"Plasticity over training: {series} (mean over seeds, band: lowest to "
                    "highest seed)")
    return figure


def curve_panels_figure(panels: dict[str, list[Curve]], colours: dict[str, Any], ylabel: str,
                        title: str, ylim: tuple[float, float] | None = None) -> Figure:
    """A panel per entry of ``panels`` (its title -> its curves), each curve in its group's
    colour (``colours`` by curve name) with its band; ``title`` over the figure."""
    figure, axes = new_figure(len(panels))
    for ax, (name, curves) in zip(axes, panels.items(), strict=True):
        for curve in curves:
            draw_band(ax, curve, colours[curve.name], curve.name)
        ax.set_title(name, fontsize="medium")
        format_steps(ax)
        ax.set_ylabel(ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    suptitle(figure, title)
    return figure


def wide_positive_range(curves: Sequence[Curve]) -> bool:
    """Whether the curves' values are all positive and span more than two decades (then a log
    axis shows them better)."""
    values = np.concatenate([np.concatenate([c.low, c.high]) for c in curves])
    values = values[np.isfinite(values)]
    return bool(values.size and values.min() > 0 and values.max() / values.min() > 100)


def heatmap_figure(groups: Sequence[str], tasks: Sequence[str], values: np.ndarray,
                   score_label: str) -> Figure:
    """Mean final score per group (rows) and task (columns) of a (groups, tasks) ``values``
    matrix (NaN: the group has no run of that task, left blank), each cell annotated."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = max(6.0, 0.75 * len(tasks) + 0.09 * max(map(len, groups)) + 2.5)
    height = max(4.5, 0.45 * len(groups) + 0.09 * max(map(len, tasks)) + 1.5)
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0.0, vmax=1.0, cmap="viridis",
                      aspect="auto")
    for (row, column), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize="small",
                    color="white" if value < 0.6 else "black")
    ax.set_xticks(range(len(tasks)), tasks, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(groups)), groups)
    ax.set_xlabel("task")
    ax.set_ylabel("group (method, sparsity)")
    colour_bar = figure.colorbar(image, ax=ax)
    colour_bar.set_label(f"mean final {score_label} (in [0, 1])")
    ax.set_title(f"Final {score_label} per task (mean over runs)")
    return figure
