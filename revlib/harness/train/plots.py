"""Training curves from a trainer's history (or a metrics file)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn
    from matplotlib.figure import Figure

__all__ = ["plot_history"]


def plot_history(
    histories: Sequence[dict] | dict[str, Sequence[dict]],
    *,
    x: str = "epoch",
    title: str | None = None,
) -> Figure:
    """Training curves: loss (left) and accuracy (right), train dashed and test solid.

    ``histories`` is one history (a list of per-epoch dicts, as
    :meth:`~revlib.harness.train.Trainer.fit` returns or the metrics file
    holds) or a dict ``label -> history``. Returns the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    items = list(histories.items()) if isinstance(histories, dict) else [("", histories)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (label, hist) in enumerate(items):
        color = f"C{i}"
        xs = [row[x] for row in hist]
        for ax, key in zip(axes, ("loss", "acc"), strict=True):
            tr = [row.get(f"train_{key}", math.nan) for row in hist]
            ax.plot(xs, tr, "--", color=color, alpha=0.8, label=f"{label} train".strip())
            te = [row.get(f"test_{key}", math.nan) for row in hist]
            if any(not math.isnan(v) for v in te):
                ax.plot(xs, te, "-", color=color, label=f"{label} test".strip())
    axes[0].set_ylabel("cross-entropy loss")
    axes[1].set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
