"""Drawing the lab's figures: numbers in, PNG or SVG bytes out.

Flow position: rest/lab.py -> lab/plots.py (numbers from the engine, the cache) ->
**figures**, run in plots.py's render worker process. It imports only numpy and
matplotlib, so that process never loads torch, and it draws through matplotlib's
object API on the Agg canvas (``Figure``, never pyplot): no GUI backend, no global
figure registry.

Output is deterministic for the same numbers and size: the SVG carries no date and a
fixed id salt, the PNG no timestamp.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

Format = Literal["png", "svg"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}
# At most this many layers get a histogram panel; deeper nets show evenly spaced ones.
MAX_PANELS = 10
PANEL_COLUMNS = 5


@dataclass(frozen=True)
class Size:
    """The image: width and height in pixels at ``dpi`` (SVG: width / dpi inches)."""

    width_px: int
    height_px: int
    dpi: int
    format: Format


def _figure(size: Size) -> Figure:
    return Figure(
        figsize=(size.width_px / size.dpi, size.height_px / size.dpi), dpi=size.dpi, layout="constrained"
    )


def _save(fig: Figure, size: Size) -> bytes:
    buffer = io.BytesIO()
    # Fixed ids and no date: the same numbers give the same SVG bytes.
    metadata: dict[str, Any] = {"Date": None} if size.format == "svg" else {}
    with (
        matplotlib.rc_context({"svg.hashsalt": "gradserve-lab", "svg.fonttype": "path"}),
        warnings.catch_warnings(),
    ):
        # Constrained layout warns when a small image cannot fit every label; the
        # image is still drawn, and nobody reads the worker's stderr.
        warnings.simplefilter("ignore")
        fig.savefig(buffer, format=size.format, dpi=size.dpi, metadata=metadata)
    return buffer.getvalue()


def panel_layers(depth: int) -> list[int]:
    """0-based layers that get a histogram panel: all of them up to MAX_PANELS, else
    evenly spaced from the first to the last."""
    if depth <= MAX_PANELS:
        return list(range(depth))
    return sorted({round(i) for i in np.linspace(0, depth - 1, MAX_PANELS)})


def _log_if_wide(ax: Axes, values: np.ndarray) -> None:
    """A log axis when positive values span more than two decades (tanh's collapse)."""
    finite = values[np.isfinite(values)]
    if finite.size and np.all(finite > 0) and finite.max() / finite.min() > 100:
        ax.set_yscale("log")


def activation_stats_figure(stats: Mapping[str, np.ndarray], title: str, size: Size) -> bytes:
    """The lecture's figures for one activation_stats run: per-layer mean and std
    curves, the weight-gradient std, and a histogram of each (shown) layer."""
    depth = len(stats["std"])
    layers = np.arange(1, depth + 1)
    shown = panel_layers(depth)
    rows = 1 + -(-len(shown) // PANEL_COLUMNS)
    fig = _figure(size)
    fig.suptitle(title)
    grid = fig.add_gridspec(rows, PANEL_COLUMNS, height_ratios=[1.3] + [1.0] * (rows - 1))

    ax = fig.add_subplot(grid[0, 0:2])
    ax.plot(layers, stats["mean"], marker="o", color="tab:blue", label="mean")
    ax.set(title="Activation mean per layer", xlabel="layer", ylabel="mean")
    ax.axhline(0.0, color="0.6", linewidth=0.8)

    ax = fig.add_subplot(grid[0, 2:4])
    ax.plot(layers, stats["std"], marker="o", color="tab:orange", label="std")
    _log_if_wide(ax, np.asarray(stats["std"]))
    ax.set(title="Activation std per layer", xlabel="layer", ylabel="std")

    ax = fig.add_subplot(grid[0, 4])
    ax.plot(layers, stats["grad_std"], marker="o", color="tab:green", label="std of dL/dW")
    _log_if_wide(ax, np.asarray(stats["grad_std"]))
    ax.set(title="Weight-gradient std", xlabel="layer", ylabel="std")
    for curve in fig.axes:
        curve.xaxis.set_major_locator(MaxNLocator(integer=True))
        curve.legend(loc="best", fontsize="small")

    # One x range for every histogram, as in the lecture: a collapsing layer shows as a
    # spike at 0, not as the same bell curve under smaller tick labels.
    first: Axes | None = None
    for i, layer in enumerate(shown):
        ax = fig.add_subplot(grid[1 + i // PANEL_COLUMNS, i % PANEL_COLUMNS], sharex=first)
        first = first or ax
        # The outline keeps a collapsed layer (all its bins narrower than a pixel)
        # visible as a spike.
        ax.stairs(
            stats["hist"][layer],
            stats["edges"][layer],
            fill=True,
            facecolor="tab:blue",
            edgecolor="tab:blue",
            linewidth=1.2,
            alpha=0.8,
        )
        ax.set_title(
            f"layer {layer + 1}\nmean {stats['mean'][layer]:.2g}, std {stats['std'][layer]:.2g}",
            fontsize="small",
        )
        ax.tick_params(labelsize="x-small")
        if i % PANEL_COLUMNS == 0:
            ax.set_ylabel("count", fontsize="small")
        if i // PANEL_COLUMNS == rows - 2:
            ax.set_xlabel("activation value", fontsize="small")
    return _save(fig, size)


def activation_figure(x: np.ndarray, y: np.ndarray, dy: np.ndarray, op: str, size: Size) -> bytes:
    """An activation and its derivative over [x[0], x[-1]]."""
    fig = _figure(size)
    ax = fig.add_subplot()
    ax.plot(x, y, color="tab:blue", linewidth=2, label=f"{op}(x)")
    ax.plot(x, dy, color="tab:orange", linewidth=2, linestyle="--", label=f"d {op}(x) / dx")
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.axvline(0.0, color="0.6", linewidth=0.8)
    ax.grid(True, alpha=0.3)
    ax.set(title=f"{op} and its derivative", xlabel="x", ylabel="value")
    ax.legend(loc="best")
    return _save(fig, size)


def margin_figure(
    margins: np.ndarray, losses: Mapping[str, np.ndarray], delta: float, classes: int, size: Size
) -> bytes:
    """One sample's hinge and softmax cross-entropy losses against the margin of its
    correct-class score over the others (all other scores equal)."""
    fig = _figure(size)
    ax = fig.add_subplot()
    styles: Sequence[tuple[str, str, str]] = (
        ("hinge", "tab:red", f"hinge (delta {delta:g}): reaches 0"),
        ("cross_entropy", "tab:blue", "softmax cross-entropy: keeps improving"),
    )
    for name, color, label in styles:
        ax.plot(margins, losses[name], color=color, linewidth=2, label=label)
    ax.axvline(delta, color="0.4", linestyle=":", linewidth=1, label=f"margin = delta = {delta:g}")
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.grid(True, alpha=0.3)
    ax.set(
        title=f"Loss of one sample ({classes} classes) as its correct-class margin grows",
        xlabel="margin: correct-class score minus each other score",
        ylabel="loss of the sample",
    )
    ax.legend(loc="best")
    return _save(fig, size)
