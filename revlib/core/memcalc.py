"""An activation-memory calculator: per layer, what a forward pass keeps for the backward.

:func:`memory_table` runs one forward pass of a model on an example batch,
with hooks on its layers, and returns a :class:`MemoryTable` with one row per
layer, in the shape of the per-layer tables of Saha and Priyanka's Rev-VGG
slides ("Reversible Nets", EECE 7398, Northeastern University): the layer, its
output shape, its parameters and the activations it keeps, per image. Two counts of the kept
activations stand side by side:

* ``kept``, the **layer-output count** of those tables: every layer keeps its
  output, one float32 tensor, except element-wise activations, dropout,
  flatten and identity (the tables list none of them); a reversible unit keeps
  nothing (its activations are rebuilt in the backward pass);
* ``saved_bytes``, the **measured** bytes that autograd saved during that
  layer's forward, counted by :class:`revlib.core.memory.SavedTensorMeter`
  (each storage once, parameters and buffers left out) and charged to the
  layer through its ``on_save`` callback. Their sum is the meter's
  total (a test checks).

The two differ, layer type by layer type, in ways the rows show: a
convolution saves its *input*, not its output; BatchNorm saves its input plus
two vectors of batch statistics; ReLU saves its output; max pooling saves its
input and an int64 index per output element; an output that no backward
formula needs (the logits, a BatchNorm output feeding a ReLU) is not kept at
all. :meth:`MemoryTable.explain` totals the differences.

Rows: leaf modules, except that a module is one row (its inside is not
listed) when it is

* a :class:`~revlib.ReversibleSequence` in mode ``"reversible"`` (kept: 0) or
  ``"checkpoint"`` (kept: the inputs of its blocks after the first, the first
  being the previous row's output);
* a module with a ``kept_activations(x, y)`` method that returns a number
  (per image) rather than ``None`` (e.g. a checkpointed RevNet transition, 0,
  or a Rev-VGG block);
* an instance of one of the ``row_types`` the caller names (kept: its
  output, like a layer; the slides' "Linear block" row is two layers).

Saved tensors created outside every row (the ``+`` of a residual unit, a
``torch.cat``) are charged to the innermost module that ran them, as a row of
kind ``(functional)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .memory import MiB, SavedTensorMeter
from .sequence import ReversibleSequence

__all__ = ["LayerRow", "MemoryTable", "memory_table", "SKIP_TYPES"]

SKIP_TYPES: tuple[type, ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Dropout,
    nn.Dropout2d,
    nn.Flatten,
    nn.Identity,
)
"""Layers that the layer-output count folds into the layer before (the tables list none)."""


@dataclass
class LayerRow:
    """One row: a layer (or a unit counted as one) and what it keeps.

    ``output_shape`` and ``kept`` are per image; ``saved_bytes`` and
    ``saved`` (a list of ``(shape, dtype)`` of the saved tensors) are for the
    batch the table was measured on.
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    kept: int
    saved_bytes: int = 0
    saved: list[tuple[tuple[int, ...], str]] = field(default_factory=list)


@dataclass
class MemoryTable:
    """The rows of :func:`memory_table` and their totals.

    ``batch`` is the batch size of the forward that was measured;
    ``measured_bytes`` the total saved bytes of that forward (the sum of the
    rows' ``saved_bytes``), ``fixed_bytes`` the part of it that does not grow
    with the batch (BatchNorm's saved statistics: 2 x C floats per layer).
    """

    rows: list[LayerRow]
    batch: int
    measured_bytes: int
    fixed_bytes: int

    @property
    def params(self) -> int:
        """Parameters of all rows."""
        return sum(r.params for r in self.rows)

    @property
    def kept(self) -> int:
        """Activations per image by the layer-output count."""
        return sum(r.kept for r in self.rows)

    def kept_bytes(self, batch: int = 128, bytes_per: int = 4) -> int:
        """Layer-output count in bytes at ``batch`` images (float32 by default)."""
        return self.kept * batch * bytes_per

    def measured_at(self, batch: int = 128) -> int:
        """The measured saved bytes scaled to ``batch`` images.

        Saved bytes are affine in the batch size: every saved activation
        grows with it, BatchNorm's statistics do not. Exact for models whose
        layers keep per-image tensors (all models here); checked in the tests.
        """
        per_image = (self.measured_bytes - self.fixed_bytes) / self.batch
        if per_image != int(per_image):
            raise ValueError(
                "measured bytes are not a whole number per image; measure at a larger batch"
            )
        return int(per_image) * batch + self.fixed_bytes

    def by_kind(self) -> dict[str, dict[str, int]]:
        """Per layer type: rows, kept activations per image, measured bytes."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            d = out.setdefault(r.kind, {"rows": 0, "kept": 0, "saved_bytes": 0})
            d["rows"] += 1
            d["kept"] += r.kept
            d["saved_bytes"] += r.saved_bytes
        return out

    def explain(self, bytes_per: int = 4) -> list[tuple[str, int, int, int]]:
        """Per layer type at the measured batch: (kind, count bytes, measured bytes, measured -
        count)."""
        rows = []
        for kind, d in self.by_kind().items():
            count = d["kept"] * self.batch * bytes_per
            rows.append((kind, count, d["saved_bytes"], d["saved_bytes"] - count))
        return rows

    def to_markdown(self, batch: int = 128, saved: bool = True) -> str:
        """The table as Markdown, with totals (MiB at ``batch`` images, float32)."""
        head = "| layer | type | output (per image) | parameters | activations kept |"
        sep = "|---|---|---|---:|---:|"
        if saved:
            head += f" saved by autograd (bytes, batch {self.batch}) |"
            sep += "---:|"
        lines = [head, sep]
        for r in self.rows:
            line = f"| {r.name} | {r.kind} | {tuple(r.output_shape)} | {r.params:,} | {r.kept:,} |"
            if saved:
                line += f" {r.saved_bytes:,} |"
            lines.append(line)
        total = f"| **total** | | | **{self.params:,}** | **{self.kept:,}** |"
        if saved:
            total += f" **{self.measured_bytes:,}** |"
        lines.append(total)
        mem = (
            f"| memory at batch {batch} | | | {self.params * 4 / MiB:.2f} MiB | "
            f"{self.kept_bytes(batch) / MiB:.2f} MiB |"
        )
        if saved:
            mem += f" {self.measured_at(batch) / MiB:.2f} MiB |"
        lines.append(mem)
        return "\n".join(lines)


def _per_image(t: Any) -> tuple[tuple[int, ...], int]:
    """(shape, number of entries) of one image of a layer's output (the first tensor of a tuple)."""
    if isinstance(t, Tensor):
        shape = tuple(t.shape[1:])
        return shape, math.prod(shape)
    if isinstance(t, (tuple, list)) and t and isinstance(t[0], Tensor):
        return _per_image(t[0])
    return (), 0


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _backward_mode(module: nn.Module) -> str | None:
    """The mode of a module that reports ``kept_activations``: its own, or that of its ``blocks``
    sequence."""
    mode = getattr(module, "mode", None)
    if mode is None and isinstance(getattr(module, "blocks", None), ReversibleSequence):
        mode = module.blocks.mode
    return mode


def _is_one_row(module: nn.Module, row_types: tuple[type, ...]) -> bool:
    """Whether ``module`` is listed as one row, its inside not listed (decided when its forward
    starts)."""
    if isinstance(module, ReversibleSequence):
        return module.mode != "autograd"
    if callable(getattr(module, "kept_activations", None)):
        return _backward_mode(module) != "autograd"
    return bool(row_types) and isinstance(module, row_types)


def _kept_by_row(
    module: nn.Module, x: Tensor | None, y: Any, row_types: tuple[type, ...]
) -> int | None:
    """Per-image kept count if ``module`` is one row, else None (a leaf's count is its output)."""
    if isinstance(module, ReversibleSequence):
        if module.mode == "reversible":
            return 0
        if module.mode == "checkpoint":  # the inputs of its blocks after the first
            return max(len(module.blocks) - 1, 0) * _per_image(y)[1]
        return None
    method = getattr(module, "kept_activations", None)
    if callable(method):
        value = method(x, y)
        if value is not None:
            return int(value)
    if row_types and isinstance(module, row_types):
        return _per_image(y)[1]
    return None


class _LayerTracer:
    """Module hooks that keep the stack of running modules, and a callback of
    :class:`~revlib.core.memory.SavedTensorMeter` that charges each storage it counts (each once,
    ``nn.Parameter`` objects and the model's parameters and buffers not at all) to the row whose
    forward is running.
    """

    def __init__(
        self, model: nn.Module, row_types: tuple[type, ...], skip: tuple[type, ...]
    ) -> None:
        self.model, self.row_types, self.skip = model, row_types, skip
        self.names = {m: n or "(model)" for n, m in model.named_modules()}
        self.stack: list[nn.Module] = []
        self.one_row: dict[nn.Module, bool] = {}
        self.rows: dict[nn.Module, LayerRow] = {}  # in the order the modules finish
        self.saved: dict[nn.Module, list[tuple[int, tuple[int, ...], str]]] = {}
        self.functional: dict[nn.Module, LayerRow] = {}
        self.fixed = 0

    # -------------------------------------------------------------- module hooks
    def enter(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.one_row[module] = _is_one_row(module, self.row_types)
        self.stack.append(module)

    def leave(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.stack.pop()
        if any(self.one_row.get(m) for m in self.stack):
            return  # inside a module that is one row
        kept = _kept_by_row(module, args[0] if args else None, output, self.row_types)
        if kept is None and not _is_leaf(module):
            return  # a container: its layers are the rows
        shape, numel = _per_image(output)
        if kept is None:
            kept = 0 if isinstance(module, self.skip) else numel
        row = self.rows.get(module)
        if row is None:  # a module called twice gets one row, its counts added
            params = sum(p.numel() for p in module.parameters())
            row = self.rows[module] = LayerRow(
                self.names.get(module, "?"), type(module).__name__, shape, params, 0
            )
        row.kept += kept

    # ------------------------------------------------------------ meter callback
    def _charged_to(self) -> nn.Module | None:
        """The outermost running module that is one row, else the running leaf; None for a
        container's own ops."""
        target = next((m for m in self.stack if self.one_row.get(m)), None)
        if target is None and self.stack and _is_leaf(self.stack[-1]):
            target = self.stack[-1]
        return target

    def charge(self, t: Tensor, nbytes: int) -> None:
        item = (nbytes, tuple(t.shape), str(t.dtype).replace("torch.", ""))
        target = self._charged_to()
        if (
            target is None
        ):  # the + of a residual unit, a torch.cat: a "(functional)" row of the running container
            owner = self.stack[-1] if self.stack else self.model
            row = self.functional.get(owner)
            if row is None:
                row = self.functional[owner] = LayerRow(
                    self.names.get(owner, "?") + " (ops)", "(functional)", (), 0, 0
                )
            row.saved_bytes += item[0]
            row.saved.append(item[1:])
            return
        self.saved.setdefault(target, []).append(item)
        if t.dim() == 1 and isinstance(target, nn.modules.batchnorm._BatchNorm):
            self.fixed += item[0]  # BatchNorm's batch statistics: C floats, whatever the batch

    # -------------------------------------------------------------------- result
    def table(self, batch: int) -> MemoryTable:
        for module, items in self.saved.items():
            row = self.rows.get(module)
            if row is None:  # saved inside a module that produced no row (should not happen)
                row = self.rows[module] = LayerRow(
                    self.names.get(module, "?"), type(module).__name__, (), 0, 0
                )
            for nbytes, shape, dtype in items:
                row.saved_bytes += nbytes
                row.saved.append((shape, dtype))
        ordered = [*self.rows.values(), *self.functional.values()]
        return MemoryTable(ordered, batch, sum(r.saved_bytes for r in ordered), self.fixed)


def memory_table(
    model: nn.Module,
    example: Tensor,
    row_types: Iterable[type] = (),
    skip: Sequence[type] = SKIP_TYPES,
    *,
    units: Iterable[type] | None = None,
) -> MemoryTable:
    """Run ``model(example)`` once with gradients on and tabulate, per layer, what it keeps.

    Args:
        model: the network, in the train/eval mode and backward mode to measure.
        example: an input batch; its batch size scales the measured bytes
            (``MemoryTable.measured_at`` extrapolates to other batch sizes).
        row_types: module types to list as one row each (kept: their output).
        skip: layer types whose output the layer-output count does not keep.
        units: the former name of ``row_types`` (still accepted).

    The graph is discarded after the forward. BatchNorm running statistics are
    updated as in any training forward; pass a copy of the model if that matters.
    """
    if units is not None:
        row_types = units
    tracer = _LayerTracer(model, tuple(row_types), tuple(skip))
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(tracer.enter))
        handles.append(m.register_forward_hook(tracer.leave))
    try:
        owned = [*model.parameters(), *model.buffers()]
        with torch.enable_grad(), SavedTensorMeter(exclude=owned, on_save=tracer.charge):
            out = model(example)
        del out
    finally:
        for h in handles:
            h.remove()
    return tracer.table(int(example.shape[0]))
