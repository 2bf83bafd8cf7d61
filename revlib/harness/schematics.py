"""The book's schematics, drawn with matplotlib's patches and arrows.

:func:`draw_additive_coupling`, :func:`draw_affine_coupling`,
:func:`draw_reversible_backward`, :func:`draw_two_step_coupling`,
:func:`draw_hamiltonian_block` and :func:`draw_revnet_stages`; the colours say
what a box is: kept for the backward, rebuilt in it, or a learned function.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

from .figures import DPI

__all__ = [
    "draw_additive_coupling",
    "draw_affine_coupling",
    "draw_reversible_backward",
    "draw_two_step_coupling",
    "draw_hamiltonian_block",
    "draw_revnet_stages",
]

_STORED = "#f4c7a1"  # kept in memory for the backward
_RECOMPUTED = "#a9d4f5"  # rebuilt in the backward
_FUNCTION = "#d9ead3"  # a learned function (F, G, a convolution)
_PLAIN = "#eeeeee"


def _box(
    ax: Axes,
    x: float,
    y: float,
    text: str,
    color: str = _PLAIN,
    w: float = 1.0,
    h: float = 0.6,
    fontsize: int = 11,
) -> tuple[float, float]:
    """A rounded box centred at (x, y); returns its centre."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.05",
            facecolor=color,
            edgecolor="black",
            lw=1.0,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)
    return x, y


def _plus(ax: Axes, x: float, y: float, sign: str = "+") -> None:
    ax.add_patch(Circle((x, y), 0.18, facecolor="white", edgecolor="black", lw=1.0))
    ax.text(x, y, sign, ha="center", va="center", fontsize=12)


def _arrow(
    ax: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    color: str = "black",
    style: str = "-|>",
    ls: str = "-",
    rad: float = 0.0,
) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=12,
            color=color,
            lw=1.2,
            linestyle=ls,
            connectionstyle=f"arc3,rad={rad}",
            shrinkA=2,
            shrinkB=2,
        )
    )


def _canvas(
    width: float, height: float, xlim: tuple[float, float], ylim: tuple[float, float]
) -> tuple[Figure, Axes]:
    fig, ax = plt.subplots(figsize=(width, height), dpi=DPI)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def draw_additive_coupling() -> Figure:
    """RevNet's additive coupling: forward (left) and its inverse (right).

    Forward: :math:`y_1 = x_1 + F(x_2)`, :math:`y_2 = x_2 + G(y_1)`.
    Inverse: :math:`x_2 = y_2 - G(y_1)`, :math:`x_1 = y_1 - F(x_2)`.
    """
    fig, ax = _canvas(10, 3.2, (-0.6, 13.2), (-0.4, 3.6))
    for x0, inverse in ((0.0, False), (7.0, True)):
        top, bottom = 2.8, 0.4
        left, right = x0, x0 + 5.2
        names_in = ("x_1", "x_2") if not inverse else ("y_1", "y_2")
        names_out = ("y_1", "y_2") if not inverse else ("x_1", "x_2")
        if not inverse:
            ax.text(left - 0.1, top, f"${names_in[0]}$", ha="right", va="center", fontsize=13)
            ax.text(left - 0.1, bottom, f"${names_in[1]}$", ha="right", va="center", fontsize=13)
            # x2 -> F -> (+) on the top rail; y1 -> G -> (+) on the bottom rail
            _box(ax, left + 1.4, 1.6, "F", _FUNCTION, w=0.8)
            _plus(ax, left + 2.2, top)
            _box(ax, left + 3.4, 1.6, "G", _FUNCTION, w=0.8)
            _plus(ax, left + 4.2, bottom)
            _arrow(ax, (left, top), (left + 2.02, top))
            _arrow(ax, (left + 2.38, top), (right, top))
            _arrow(ax, (left, bottom), (left + 4.02, bottom))
            _arrow(ax, (left + 4.38, bottom), (right, bottom))
            _arrow(ax, (left + 0.6, bottom), (left + 1.4, 1.28))
            _arrow(ax, (left + 1.4, 1.92), (left + 2.2, top - 0.18))
            _arrow(ax, (left + 2.7, top), (left + 3.4, 1.92))
            _arrow(ax, (left + 3.4, 1.28), (left + 4.2, bottom + 0.18))
            ax.set_title("")
            ax.text((left + right) / 2, 3.35, "forward", ha="center", fontsize=12, weight="bold")
        else:
            ax.text(left - 0.1, top, f"${names_in[0]}$", ha="right", va="center", fontsize=13)
            ax.text(left - 0.1, bottom, f"${names_in[1]}$", ha="right", va="center", fontsize=13)
            # undo G first: x2 = y2 - G(y1); then x1 = y1 - F(x2)
            _box(ax, left + 1.4, 1.6, "G", _FUNCTION, w=0.8)
            _plus(ax, left + 2.2, bottom, "−")
            _box(ax, left + 3.4, 1.6, "F", _FUNCTION, w=0.8)
            _plus(ax, left + 4.2, top, "−")
            _arrow(ax, (left, top), (left + 4.02, top))
            _arrow(ax, (left + 4.38, top), (right, top))
            _arrow(ax, (left, bottom), (left + 2.02, bottom))
            _arrow(ax, (left + 2.38, bottom), (right, bottom))
            _arrow(ax, (left + 0.6, top), (left + 1.4, 1.92))
            _arrow(ax, (left + 1.4, 1.28), (left + 2.2, bottom + 0.18))
            _arrow(ax, (left + 2.7, bottom), (left + 3.4, 1.28))
            _arrow(ax, (left + 3.4, 1.92), (left + 4.2, top - 0.18))
            ax.text((left + right) / 2, 3.35, "inverse", ha="center", fontsize=12, weight="bold")
        ax.text(right + 0.1, top, f"${names_out[0]}$", ha="left", va="center", fontsize=13)
        ax.text(right + 0.1, bottom, f"${names_out[1]}$", ha="left", va="center", fontsize=13)
    return fig


def draw_affine_coupling() -> Figure:
    """Real NVP's affine coupling: forward (left) and its inverse (right).

    Drawn like :func:`draw_additive_coupling`. Forward: :math:`y_1 = x_1`,
    :math:`y_2 = x_2 \\odot \\exp(s(x_1)) + t(x_1)`. Inverse: :math:`x_1 = y_1`,
    :math:`x_2 = (y_2 - t(y_1)) \\odot \\exp(-s(y_1))`. One network returns both
    :math:`s` and :math:`t`.
    """
    fig, ax = _canvas(10, 3.2, (-0.6, 13.2), (-0.4, 3.6))
    for x0, inverse in ((0.0, False), (7.0, True)):
        top, bottom = 2.8, 0.4
        left, right = x0, x0 + 5.2
        names_in = ("x_1", "x_2") if not inverse else ("y_1", "y_2")
        names_out = ("y_1", "y_2") if not inverse else ("x_1", "x_2")
        ax.text(left - 0.1, top, f"${names_in[0]}$", ha="right", va="center", fontsize=13)
        ax.text(left - 0.1, bottom, f"${names_in[1]}$", ha="right", va="center", fontsize=13)
        # the first half passes unchanged and feeds the network that returns s and t
        _box(ax, left + 1.6, 1.6, "$s,\\ t$", _FUNCTION, w=1.0)
        _arrow(ax, (left, top), (right, top))
        _arrow(ax, (left + 0.7, top), (left + 1.4, 1.92))
        # forward: scale, then shift; inverse: unshift, then unscale. The network's
        # output used first leaves from the box's bottom, the other from its right side.
        near, far = left + 2.4, left + 3.9
        scale_label = "$\\exp(s)$" if not inverse else "$\\exp(-s)$"
        (near_sign, near_label), (far_sign, far_label) = (
            (("⊙", scale_label), ("+", "$t$"))
            if not inverse
            else (("−", "$t$"), ("⊙", scale_label))
        )
        _plus(ax, near, bottom, near_sign)
        _plus(ax, far, bottom, far_sign)
        _arrow(ax, (left, bottom), (near - 0.18, bottom))
        _arrow(ax, (near + 0.18, bottom), (far - 0.18, bottom))
        _arrow(ax, (far + 0.18, bottom), (right, bottom))
        _arrow(ax, (left + 1.6, 1.28), (near - 0.08, bottom + 0.17))
        _arrow(ax, (left + 2.12, 1.6), (far - 0.08, bottom + 0.17))
        ax.text(left + 1.95, 0.75, near_label, ha="right", va="center", fontsize=11)
        ax.text(left + 3.15, 1.3, far_label, ha="left", va="center", fontsize=11)
        title = "forward" if not inverse else "inverse"
        ax.text((left + right) / 2, 3.35, title, ha="center", fontsize=12, weight="bold")
        ax.text(right + 0.1, top, f"${names_out[0]}$", ha="left", va="center", fontsize=13)
        ax.text(right + 0.1, bottom, f"${names_out[1]}$", ha="left", va="center", fontsize=13)
    return fig


def draw_reversible_backward(blocks: int = 4) -> Figure:
    """Algorithm 1 of Gomez et al. (2017) as a dataflow over a chain of ``blocks`` couplings.

    Top row: the forward, which keeps only the chain's output. Bottom row: the
    backward, which walks the chain from the top, rebuilding each block's input
    from its output (recomputing G then F), then taking the vector-Jacobian
    products of that block; the rebuilt input is the next step's output.
    """
    fig, ax = _canvas(10, 3.6, (-0.8, 2.2 * blocks + 1.4), (-2.3, 1.9))
    xs = [2.2 * i for i in range(blocks + 1)]
    for i, x in enumerate(xs):
        color = _STORED if i == blocks else _PLAIN
        _box(ax, x, 1.0, f"$x^{{({i})}}$", color, w=0.8, h=0.55)
        _box(
            ax,
            x,
            -1.4,
            f"$x^{{({i})}}$" if i < blocks else f"$x^{{({i})}}$",
            _RECOMPUTED if i < blocks else _STORED,
            w=0.8,
            h=0.55,
        )
        if i < blocks:
            _box(ax, x + 1.1, 1.0, f"block {i + 1}", _FUNCTION, w=1.0, h=0.5, fontsize=9)
            _arrow(ax, (x + 0.4, 1.0), (x + 0.6, 1.0))
            _arrow(ax, (x + 1.6, 1.0), (x + 1.8, 1.0))
            _box(ax, x + 1.1, -1.4, "recompute\nG, F; VJPs", _FUNCTION, w=1.2, h=0.8, fontsize=8)
            _arrow(ax, (x + 1.8, -1.4), (x + 1.7, -1.4))
            _arrow(ax, (x + 0.5, -1.4), (x + 0.4, -1.4))
    _arrow(ax, (xs[-1], 0.7), (xs[-1], -1.1), ls="--")
    ax.text(xs[-1] + 0.15, -0.2, "output\nkept", fontsize=9, va="center")
    ax.text(-0.7, 1.55, "forward: nothing inside the chain is kept", fontsize=10, ha="left")
    ax.text(
        -0.7,
        -2.2,
        "backward (right to left): each block's input is rebuilt from its output,"
        " with the gradient $\\bar x$",
        fontsize=10,
        ha="left",
    )
    handles = [
        Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="black") for c in (_STORED, _RECOMPUTED)
    ]
    ax.legend(
        handles,
        ["stored", "recomputed in the backward"],
        loc="upper right",
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(1.0, 1.12),
    )
    return fig


def draw_two_step_coupling() -> Figure:
    """A two-step scheme as a coupling on the pair :math:`(Y_{j-1}, Y_j)`.

    :math:`(Y_{j-1}, Y_j) \\mapsto (Y_j, Y_{j+1})` with
    :math:`Y_{j+1} = Y_{j-1} + 2h F(Y_j)` (Midpoint): an additive coupling
    followed by a swap, inverted by :math:`Y_{j-1} = Y_{j+1} - 2h F(Y_j)`.
    """
    fig, ax = _canvas(8, 2.8, (-1.0, 8.2), (-0.5, 3.0))
    top, bottom = 2.3, 0.3
    ax.text(-0.1, top, "$Y_{j}$", ha="right", va="center", fontsize=13)
    ax.text(-0.1, bottom, "$Y_{j-1}$", ha="right", va="center", fontsize=13)
    _box(ax, 1.8, 1.3, "$2hF$", _FUNCTION, w=1.0)
    _plus(ax, 2.8, bottom)
    _arrow(ax, (0.0, top), (4.0, top))
    _arrow(ax, (0.0, bottom), (2.62, bottom))
    _arrow(ax, (2.98, bottom), (4.0, bottom))
    _arrow(ax, (0.8, top), (1.8, 1.6))
    _arrow(ax, (1.8, 1.0), (2.8, bottom + 0.18))
    # the swap
    _arrow(ax, (4.0, top), (6.0, bottom), rad=0.0)
    _arrow(ax, (4.0, bottom), (6.0, top), rad=0.0)
    ax.text(
        5.0,
        1.3,
        "swap",
        ha="center",
        va="center",
        fontsize=10,
        bbox=dict(facecolor="white", edgecolor="none"),
    )
    ax.text(6.1, top, "$Y_{j+1}$", ha="left", va="center", fontsize=13)
    ax.text(6.1, bottom, "$Y_{j}$", ha="left", va="center", fontsize=13)
    ax.text(
        3.4,
        2.85,
        "$Y_{j+1} = Y_{j-1} + 2h\\,F(Y_j)$: an additive coupling, then a swap",
        ha="center",
        fontsize=11,
    )
    return fig


def draw_hamiltonian_block() -> Figure:
    """Chang et al.'s two-layer Hamiltonian block as a dataflow.

    :math:`Y_{j+1} = Y_j + h K_1^\\top \\sigma(K_1 Z_j + b_1)`, then
    :math:`Z_{j+1} = Z_j - h K_2^\\top \\sigma(K_2 Y_{j+1} + b_2)`: an additive
    coupling whose F and G apply a kernel, the activation, and the same kernel
    transposed (one weight, drawn with a dashed link), scaled by the step h.
    """
    fig, ax = _canvas(10, 3.2, (-0.9, 12.6), (-0.4, 3.5))
    top, bottom = 2.9, 0.2
    ax.text(-0.15, top, "$Y_j$", ha="right", va="center", fontsize=13)
    ax.text(-0.15, bottom, "$Z_j$", ha="right", va="center", fontsize=13)
    for y_row, names, start, add_at, sign, rail_from in (
        (
            1.95,
            ("$K_1$", "$\\sigma(\\cdot + b_1)$", "$K_1^\\top$", "$\\times h$"),
            0.9,
            5.6,
            "+",
            bottom,
        ),
        (
            1.15,
            ("$K_2$", "$\\sigma(\\cdot + b_2)$", "$K_2^\\top$", "$\\times h$"),
            6.3,
            11.0,
            "−",
            top,
        ),
    ):
        xs = [start + 1.15 * k for k in range(4)]
        for k, (x, name) in enumerate(zip(xs, names, strict=True)):
            _box(
                ax,
                x,
                y_row,
                name,
                _FUNCTION if k < 3 else _PLAIN,
                w=0.8 if k != 1 else 0.95,
                h=0.5,
                fontsize=9,
            )
            if k:
                _arrow(
                    ax,
                    (xs[k - 1] + (0.48 if k == 2 else 0.4), y_row),
                    (x - (0.48 if k == 1 else 0.4), y_row),
                )
        ax.add_patch(
            FancyArrowPatch(
                (xs[0], y_row + 0.27),
                (xs[2], y_row + 0.27),
                arrowstyle="-",
                ls="--",
                color="0.4",
                connectionstyle="arc3,rad=-0.45",
                lw=0.9,
            )
        )
        _arrow(ax, (start - 0.55, rail_from), (xs[0] - 0.4, y_row))
        rail_to = top if sign == "+" else bottom
        _plus(ax, add_at, rail_to, sign)
        _arrow(ax, (xs[3] + 0.4, y_row), (add_at, rail_to + (-0.18 if sign == "+" else 0.18)))
    _arrow(ax, (0.0, top), (5.6 - 0.18, top))
    _arrow(ax, (5.6 + 0.18, top), (11.9, top))
    _arrow(ax, (0.0, bottom), (11.0 - 0.18, bottom))
    _arrow(ax, (11.0 + 0.18, bottom), (11.9, bottom))
    ax.text(12.0, top, "$Y_{j+1}$", ha="left", va="center", fontsize=13)
    ax.text(12.0, bottom, "$Z_{j+1}$", ha="left", va="center", fontsize=13)
    ax.text(
        2.6, 1.5, "F: one kernel $K_1$, used twice (dashed)", fontsize=8, ha="center", color="0.3"
    )
    ax.text(8.0, 0.6, "G: reads the new $Y_{j+1}$", fontsize=8, ha="center", color="0.3")
    return fig


def draw_revnet_stages(
    units: Sequence[int] = (3, 3, 3), channels: Sequence[int] = (32, 64, 112)
) -> Figure:
    """A CIFAR RevNet's layout: stem, reversible stages, non-reversible transitions, head.

    Boxes whose input is stored for the backward are orange; reversible units,
    whose activations are rebuilt, are blue.
    """
    width = 1.6 + sum(min(u, 3) * 0.75 + 1.0 for u in units) + 1.6
    fig, ax = _canvas(11, 2.6, (-0.3, width + 0.2), (-0.9, 1.5))
    x = 0.5
    _box(ax, x, 0.3, f"conv 3x3\n{channels[0]} ch", _STORED, w=1.0, h=0.8, fontsize=8)
    x += 0.5
    for s, (u, c) in enumerate(zip(units, channels, strict=True)):
        if s > 0:
            _arrow(ax, (x, 0.3), (x + 0.2, 0.3))
            _box(ax, x + 0.6, 0.3, "stride 2\n+ pad", _STORED, w=0.75, h=0.8, fontsize=8)
            x += 1.0
        _arrow(ax, (x, 0.3), (x + 0.2, 0.3))
        x += 0.2
        shown = min(u, 3)
        for k in range(shown):
            label = "..." if (u > 3 and k == 1) else "rev"
            _box(ax, x + 0.3, 0.3, label, _RECOMPUTED, w=0.55, h=0.8, fontsize=8)
            x += 0.75
        ax.text(
            x - 0.75 * shown / 2 - 0.1,
            -0.55,
            f"stage {s + 1}: {u} units, {c} ch",
            ha="center",
            fontsize=8,
        )
    _arrow(ax, (x, 0.3), (x + 0.2, 0.3))
    _box(ax, x + 0.8, 0.3, "BN-ReLU\npool, FC", _STORED, w=1.1, h=0.8, fontsize=8)
    handles = [
        Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="black") for c in (_STORED, _RECOMPUTED)
    ]
    ax.legend(
        handles,
        ["not reversible: input stored", "reversible unit: rebuilt in the backward"],
        loc="upper center",
        ncol=2,
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, 1.18),
    )
    return fig
