"""Plots, schematics and tables shared by the book's chapters.

The chapters call these so that a cell shows the idea, not the matplotlib
calls. Only matplotlib, numpy and IPython are used (the ``revlib[train]`` extra).

* :func:`markdown_table` renders a list of rows as a Markdown table.
* :func:`plot_series` draws one or more curves against a shared x axis
  (memory against depth, error against depth, ...).
* :mod:`revlib.harness.schematics` draws the book's schematics.
* :func:`plot_stability_regions` draws the stability regions of forward Euler,
  the explicit Midpoint rule and Leapfrog/Verlet in the plane of :math:`h\\lambda`,
  with a block's :math:`h\\lambda` on top.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Circle

__all__ = [
    "DPI",
    "markdown_table",
    "show_table",
    "plot_series",
    "plot_stability_regions",
]

DPI = 80
"""Dots per inch of the book's figures (modest, so that the notebooks stay small)."""


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table with the given header and rows (cells formatted with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(
                f"markdown_table: a row has {len(cells)} cells, the header {len(header)}: {cells}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def show_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], caption: str | None = None
) -> None:
    """Display :func:`markdown_table` (with an optional bold caption above it) in the notebook."""
    from IPython.display import Markdown, display

    text = markdown_table(header, rows)
    display(Markdown(f"**{caption}**\n\n{text}" if caption else text))


def plot_series(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logy: bool = False,
    logx: bool = False,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (6.0, 3.8),
) -> Figure | SubFigure:
    """Curves ``series[label]`` against ``x`` with markers, a grid and a legend; returns the
    figure."""
    fig: Figure | SubFigure  # the figure of the Axes given: a SubFigure if it lies in one
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, dpi=DPI)
    else:
        fig = ax.figure
    # A marker per curve; beyond 32 curves the rest would not be drawn.
    for (label, ys), marker in zip(series.items(), "o^sDvP*X" * 4, strict=False):
        ax.plot(x, ys, marker + "-", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log", base=2)
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3, which="both" if (logx or logy) else "major")
    return fig


# --- stability -------------------------------------------------------------------------


def plot_stability_regions(
    points: Mapping[str, np.ndarray] | None = None,
    ax: Axes | None = None,
    extent: float = 2.6,
    xlim: tuple[float, float] | None = None,
) -> Figure | SubFigure:
    """Stability regions in the plane of :math:`z = h\\lambda`, with optional points on top.

    * forward Euler, :math:`y_{j+1} = (1 + z) y_j`: the disk :math:`|1 + z| \\le 1`;
    * the explicit Midpoint (leapfrog two-step) rule, :math:`y_{j+1} = y_{j-1} + 2z y_j`:
      the segment :math:`z \\in i(-1, 1)` of the imaginary axis;
    * Verlet (Störmer-Verlet, leapfrog) for a Hamiltonian system whose
      linearisation has eigenvalues :math:`\\pm i\\omega`: :math:`h\\omega < 2`,
      the segment :math:`z \\in i(-2, 2)`.

    ``points[label]`` are complex values :math:`h\\lambda` (e.g. a block's Jacobian
    eigenvalues times its step size). The window is ``extent`` up and down and,
    unless ``xlim`` is given, from ``-extent`` to ``0.6 extent`` left to right.
    """
    fig: Figure | SubFigure  # the figure of the Axes given: a SubFigure if it lies in one
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.4, 5.0), dpi=DPI)
    else:
        fig = ax.figure
    ax.add_patch(
        Circle(
            (-1, 0),
            1,
            facecolor="#cfe2f3",
            edgecolor="#3d85c6",
            lw=1.2,
            alpha=0.8,
            label="forward Euler: $|1+h\\lambda| \\leq 1$",
        )
    )
    ax.plot(
        [0, 0],
        [-2, 2],
        color="#e69138",
        lw=5,
        alpha=0.4,
        solid_capstyle="butt",
        label="Verlet: $h\\lambda \\in i(-2, 2)$",
    )
    ax.plot(
        [0, 0],
        [-1, 1],
        color="#990000",
        lw=1.5,
        solid_capstyle="butt",
        label="Midpoint: $h\\lambda \\in i(-1, 1)$",
    )
    # A marker per set of points; beyond 5 sets the rest would not be drawn.
    for (label, z), marker in zip((points or {}).items(), "ox^sD", strict=False):
        z = np.asarray(z, dtype=complex)
        ax.plot(z.real, z.imag, marker, ms=4, mfc="none", alpha=0.8, label=label)
    ax.axhline(0, color="gray", lw=0.6)
    ax.axvline(0, color="gray", lw=0.6)
    ax.set_xlim(*(xlim or (-extent, extent * 0.6)))
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("Re $h\\lambda$")
    ax.set_ylabel("Im $h\\lambda$")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig
