"""Which tensors one training step holds, step by step: autograd, checkpointing, reversible.

Chapter 3 animates Algorithm 1 with this module. A training step of a chain of
``blocks`` blocks is written as a list of :class:`Step` s, each naming the
tensors it *uses* and the tensors it *creates*; nothing says when a tensor is
freed. :func:`replay` works that out by liveness, as a memory allocator fed by
reference counting would: a tensor is alive from the step that creates it to
the last step that uses it (a result of the whole step, the input's gradient,
to the end). The alive sets, their sizes and the peaks all follow from the
schedules, so the figures are computed, not drawn by hand.

The tensors are named ``x0`` ... ``xN`` (the input of block 1, the outputs of
blocks 1 to N), ``a1`` ... ``aN`` (what autograd saves inside block ``i``,
one box however many tensors it is) and ``g0`` ... ``gN`` (the gradients of
the loss with respect to ``x0`` ... ``xN``). Parameters and their gradients
are the same for every schedule and are left out.

* :func:`schedule` writes the step of ``"autograd"``, ``"checkpoint"``
  (every block's input kept, its internals recomputed in the backward) or
  ``"reversible"`` (Algorithm 1: only the chain's output kept).
* :func:`replay` gives, for each step, what is alive while it runs.
* :func:`aligned` lines the three schedules up phase by phase for a
  side-by-side view (autograd has nothing to recompute: it waits).
* :func:`animate_schedules` draws them as a matplotlib animation,
  :func:`plot_alive_counts` as a static plot, and :func:`animation_html` turns
  the animation into a small self-contained HTML player.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.animation import FuncAnimation
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter

try:  # Pillow comes with matplotlib, which needs it; without it the frames stay as drawn
    from PIL import Image
except ImportError:  # pragma: no cover
    Image = None  # type: ignore[assignment]

__all__ = [
    "SCHEDULES",
    "Step",
    "Frame",
    "AnimationHTML",
    "animation_html",
    "schedule",
    "replay",
    "peak",
    "aligned",
    "animate_schedules",
    "plot_alive_counts",
]

SCHEDULES = ("autograd", "checkpoint", "reversible")

_FORWARD = "#f4c7a1"  # made in the forward (kept for the backward if still alive)
_REBUILT = "#a9d4f5"  # made again in the backward
_GRADIENT = "#b6d7a8"  # a gradient of the loss
_EMPTY = "white"


@dataclass(frozen=True)
class Step:
    """One step of a schedule.

    Attributes:
        phase: where the step sits in a training step, the same for every schedule:
            ``("forward", i)``, ``("loss", 0)``, ``("recompute", i)`` or ``("backward", i)``.
        action: what it does, in words.
        uses: tensors it reads (they must be alive).
        creates: tensors it makes (a name made again is a new tensor).
    """

    phase: tuple[str, int]
    action: str
    uses: tuple[str, ...]
    creates: tuple[str, ...]


@dataclass(frozen=True)
class Frame:
    """What a schedule holds while one step runs.

    Attributes:
        step: the step (``None`` where the schedule has no step in this phase).
        alive: every tensor alive during the step: those it uses or creates and
            those held for a later step.
        rebuilt: the alive tensors that were made in the backward (recomputed
            or reconstructed), not kept from the forward.
    """

    step: Step | None
    alive: frozenset[str]
    rebuilt: frozenset[str]

    def size(self, internals: float = 1.0) -> float:
        """Tensors alive, a block's internals (``a_i``) counted as ``internals`` tensors."""
        return sum(internals if name.startswith("a") else 1.0 for name in self.alive)


def schedule(method: str, blocks: int) -> list[Step]:
    """One training step (forward, loss gradient, backward) of a chain of ``blocks`` blocks."""
    if method not in SCHEDULES:
        raise ValueError(f"schedule: method must be one of {SCHEDULES}, got {method!r}")
    if blocks < 1:
        raise ValueError(f"schedule: blocks must be at least 1, got {blocks}")
    steps = []
    for i in range(1, blocks + 1):
        if method == "autograd":
            steps.append(
                Step(("forward", i), f"block {i}, graph kept", (f"x{i - 1}",), (f"x{i}", f"a{i}"))
            )
        else:
            steps.append(Step(("forward", i), f"block {i}, no graph", (f"x{i - 1}",), (f"x{i}",)))
    steps.append(Step(("loss", 0), "loss gradient", (f"x{blocks}",), (f"g{blocks}",)))
    for i in range(blocks, 0, -1):
        grads = (f"g{i}", f"a{i}")
        if method == "autograd":
            # autograd's saved tensors of block i include its input
            steps.append(
                Step(("backward", i), f"VJPs of block {i}", (*grads, f"x{i - 1}"), (f"g{i - 1}",))
            )
        elif method == "checkpoint":
            steps.append(
                Step(
                    ("recompute", i), f"re-run block {i} from x{i - 1}", (f"x{i - 1}",), (f"a{i}",)
                )
            )
            steps.append(
                Step(("backward", i), f"VJPs of block {i}", (*grads, f"x{i - 1}"), (f"g{i - 1}",))
            )
        else:
            steps.append(
                Step(
                    ("recompute", i),
                    f"rebuild x{i - 1} from x{i} (G, then F)",
                    (f"x{i}",),
                    (f"x{i - 1}", f"a{i}"),
                )
            )
            steps.append(Step(("backward", i), f"VJPs of block {i}", grads, (f"g{i - 1}",)))
    return steps


def replay(
    steps: Sequence[Step], inputs: Sequence[str] = ("x0",), results: Sequence[str] = ("g0",)
) -> list[Frame]:
    """What is alive during each step of ``steps``, by liveness.

    ``inputs`` are alive before the first step; ``results`` stay alive to the end. Every
    other tensor lives from the step that creates it to the last step that uses it (a
    tensor nobody uses dies with the step that made it). A step that uses a tensor that
    is not alive raises ``ValueError``.
    """
    # each creation is a new tensor: (name, k) for the k-th tensor of that name
    made: dict[str, int] = {name: 0 for name in inputs}
    made_at: dict[tuple[str, int], int] = {(name, 0): -1 for name in inputs}
    last_use: dict[tuple[str, int], int] = {key: -1 for key in made_at}
    in_backward: set[tuple[str, int]] = set()
    for t, step in enumerate(steps):
        for name in step.uses:
            if name not in made:
                raise ValueError(f"replay: step {t} ({step.action}) uses {name}, never made")
            last_use[(name, made[name])] = t
        for name in step.creates:
            made[name] = made.get(name, -1) + 1
            key = (name, made[name])
            made_at[key] = last_use[key] = t
            if step.phase[0] in ("recompute", "backward") and not name.startswith("g"):
                in_backward.add(key)
    for name in results:
        last_use[(name, made[name])] = len(steps)
    frames = []
    for t, step in enumerate(steps):
        alive = {key for key in made_at if made_at[key] <= t <= last_use[key]}
        frames.append(
            Frame(
                step,
                frozenset(name for name, _ in alive),
                frozenset(name for name, k in alive if (name, k) in in_backward),
            )
        )
    return frames


def peak(method: str, blocks: int, internals: float = 1.0) -> float:
    """The most tensors alive during any step of ``method``'s schedule (internals weighted)."""
    return max(frame.size(internals) for frame in replay(schedule(method, blocks)))


def aligned(blocks: int, methods: Sequence[str] = SCHEDULES) -> list[dict[str, Frame]]:
    """The schedules of ``methods`` side by side, one entry per phase.

    Phases run forward 1..N, loss, then recompute and backward for N..1. A schedule
    without a step in a phase (autograd recomputes nothing) holds what it held after its
    previous step.
    """
    frames = {m: replay(schedule(m, blocks)) for m in methods}
    phases = [("forward", i) for i in range(1, blocks + 1)] + [("loss", 0)]
    for i in range(blocks, 0, -1):
        phases += [("recompute", i), ("backward", i)]
    rows: list[dict[str, Frame]] = [
        {m: Frame(None, frozenset({"x0"}), frozenset()) for m in methods}
    ]  # before the step: the input only
    for phase in phases:
        row = {}
        for m in methods:
            match = [f for f in frames[m] if f.step is not None and f.step.phase == phase]
            if match:
                row[m] = match[0]
            else:  # waiting: what was alive after the last step, less what that step freed
                before = rows[-1][m]
                kept = _after(frames[m], before)
                row[m] = Frame(None, kept, before.rebuilt & kept)
        rows.append(row)
    return rows


def _after(frames: Sequence[Frame], frame: Frame) -> frozenset[str]:
    """What stays alive after ``frame``'s step: alive during it and during the next one."""
    if frame.step is None:
        return frame.alive
    index = next(i for i, f in enumerate(frames) if f is frame)
    if index + 1 == len(frames):
        return frame.alive
    return frame.alive & frames[index + 1].alive


def _phase_title(phase: tuple[str, int] | None, blocks: int) -> str:
    if phase is None:
        return "before the step: the input x0"
    kind, i = phase
    return {
        "forward": f"forward, block {i} of {blocks}",
        "loss": f"the loss: its gradient g{blocks} with respect to the output",
        "recompute": f"backward, block {i}: recompute what its VJPs need",
        "backward": f"backward, block {i}: the vector-Jacobian products",
    }[kind]


def _draw_state(ax: Axes, frame: Frame, blocks: int, new: frozenset[str]) -> None:
    """The tensors of a chain of ``blocks`` blocks on ``ax``: filled if alive, with a bold edge
    if the step uses or makes them (bold name: made by the step)."""
    ax.clear()
    ax.set_xlim(-1.3, blocks + 0.45)
    ax.set_ylim(-0.3, 2.75)
    ax.axis("off")
    touched = set() if frame.step is None else set(frame.step.uses) | set(frame.step.creates)
    rows = [("x", 2.2, range(blocks + 1), 0.0), ("a", 1.2, range(1, blocks + 1), -0.5)]
    rows.append(("g", 0.2, range(blocks + 1), 0.0))
    for prefix, y, indices, shift in rows:
        for i in indices:
            name = f"{prefix}{i}"
            alive = name in frame.alive
            if not alive:
                color = _EMPTY
            elif prefix == "g":
                color = _GRADIENT
            else:
                color = _REBUILT if name in frame.rebuilt else _FORWARD
            ax.add_patch(
                Rectangle(
                    (i + shift - 0.36, y - 0.36),
                    0.72,
                    0.72,
                    facecolor=color,
                    edgecolor="black" if alive else "0.8",
                    lw=2.4 if name in touched else 0.8,
                    ls="-" if alive else ":",
                )
            )
            if alive:
                ax.text(
                    i + shift,
                    y,
                    name,
                    ha="center",
                    va="center",
                    fontsize=8,
                    weight="bold" if name in new else "normal",
                )
    for y, text in ((2.2, "x"), (1.2, "int."), (0.2, "grad")):
        ax.text(-0.75, y, text, fontsize=7, color="0.35", ha="center", va="center")


class AnimationHTML:
    """An animation as HTML for a notebook, with a plain-text stand-in for outputs that show no
    HTML (a PDF)."""

    def __init__(self, html: str, text: str) -> None:
        self.html, self.text = html, text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


_FRAME = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=\\\n]+)")


def _fewer_colors(match: re.Match[str], colors: int) -> str:
    png = base64.b64decode(match.group(1).replace("\\\n", ""))
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=colors)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def animation_html(anim: FuncAnimation, text: str, colors: int = 32) -> AnimationHTML:
    """``anim`` as matplotlib's JavaScript player (``to_jshtml``, shown once), each frame
    re-encoded with a palette of ``colors`` colours (flat figures lose nothing visible and
    shrink about four times); ``text`` stands in where HTML is not shown."""
    html = anim.to_jshtml(default_mode="once")
    if Image is None:  # pragma: no cover
        return AnimationHTML(html, text)
    return AnimationHTML(_FRAME.sub(lambda m: _fewer_colors(m, colors), html), text)


def animate_schedules(
    blocks: int = 4,
    methods: Sequence[str] = SCHEDULES,
    internals: float = 1.0,
    dpi: int = 80,
    interval_ms: int = 1500,
) -> tuple[Figure, FuncAnimation]:
    """The schedules of ``methods`` stepped through side by side: one frame per phase of
    :func:`aligned`.

    Each panel shows the chain's tensors (activations ``x``, each block's internals, gradients
    ``g``): filled while alive (orange: made in the forward, blue: made again in the backward,
    green: a gradient), with a bold edge when the step uses or makes them; its title counts
    the tensors alive and the peak so far (internals weighted by ``internals``).
    """
    rows = aligned(blocks, methods)
    fig, axes = plt.subplots(
        1, len(methods), figsize=(3.6 * len(methods), 2.6), dpi=dpi, squeeze=False
    )
    handles = [
        Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="black", lw=w)
        for c, w in ((_FORWARD, 0.8), (_REBUILT, 0.8), (_GRADIENT, 0.8), (_EMPTY, 2.4))
    ]
    fig.legend(
        handles,
        [
            "made in the forward",
            "made again in the backward",
            "a gradient",
            "used or made by the step",
        ],
        loc="lower center",
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    panels = list(axes[0])
    sizes = {m: [row[m].size(internals) for row in rows] for m in methods}

    def draw(k: int) -> None:
        row = rows[k]
        first = next((f.step for f in row.values() if f.step is not None), None)
        fig.suptitle(
            f"step {k} of {len(rows) - 1}: "
            + _phase_title(None if first is None else first.phase, blocks),
            fontsize=10,
        )
        for ax, m in zip(panels, methods, strict=True):
            frame = row[m]
            size, peak_so_far = sizes[m][k], max(sizes[m][: k + 1])
            new = frozenset() if frame.step is None else frozenset(frame.step.creates)
            _draw_state(ax, frame, blocks, new)
            action = "(nothing to recompute)" if frame.step is None else frame.step.action
            ax.set_title(
                f"{m}: {size:g} alive, peak {peak_so_far:g}\n{action}" if k else f"{m}\n",
                fontsize=9,
            )

    draw(0)
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.1, top=0.76, wspace=0.02)
    anim = FuncAnimation(fig, draw, frames=len(rows), interval=interval_ms, blit=False)
    return fig, anim


def plot_alive_counts(
    blocks: int,
    depths: Sequence[int],
    methods: Sequence[str] = SCHEDULES,
    internals: float = 1.0,
    dpi: int = 80,
) -> tuple[Figure, Mapping[str, list[float]]]:
    """Static: tensors alive at each phase for ``blocks`` blocks (left) and the peak against
    depth (right); returns the figure and the counts per phase."""
    rows = aligned(blocks, methods)
    counts = {m: [row[m].size(internals) for row in rows] for m in methods}
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 2.8), dpi=dpi, width_ratios=[1.6, 1])
    labels = ["in"]
    for row in rows[1:]:
        phase = next(f.step.phase for f in row.values() if f.step is not None)
        labels.append(
            {"forward": "F", "loss": "L", "recompute": "R", "backward": "B"}[phase[0]]
            + (str(phase[1]) if phase[0] != "loss" else "")
        )
    for m, marker in zip(methods, "os^", strict=False):
        left.plot(range(len(rows)), counts[m], marker + "-", label=m, ms=4)
        right.plot(depths, [peak(m, d, internals) for d in depths], marker + "-", label=m, ms=4)
    left.set_xticks(range(len(rows)), labels, fontsize=7)
    left.set_xlabel(f"step ({blocks} blocks; F forward, L loss, R recompute, B backward)")
    left.set_ylabel("tensors alive")
    left.legend(fontsize=8)
    right.set_xscale("log", base=2)
    right.set_yscale("log", base=2)
    right.set_xticks(list(depths), [f"{d:g}" for d in depths])
    right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    right.set_xlabel("blocks N")
    right.set_ylabel("peak tensors alive")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, counts
