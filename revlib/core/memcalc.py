"""An activation-memory calculator: per layer, what a forward pass keeps for the backward.

:func:`memory_table` runs one forward pass of a model on an example batch,
with hooks on its layers, and returns a :class:`MemoryTable` with one row per
layer, in the shape of seed 003's tables: the layer, its output shape, its
parameters and the activations it keeps, per image. Two counts of the kept
activations stand side by side:

* ``kept``, the **layer-output count** of seed 003: every layer keeps its
  output, one float32 tensor, except element-wise activations, dropout,
  flatten and identity (the seed lists none of them); a reversible unit keeps
  nothing (its activations are rebuilt in the backward pass);
* ``saved_bytes``, the **measured** bytes that autograd saved during that
  layer's forward, found with :func:`torch.autograd.graph.saved_tensors_hooks`
  exactly as :class:`revlib.core.memory.SavedTensorMeter` does (each storage once,
  parameters and buffers left out). Their sum is the meter's total.

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
* an instance of one of the ``units`` types the caller names (kept: its
  output, like a layer; seed 003's "Linear block" row is two layers).

Saved tensors created outside every row (the ``+`` of a residual unit, a
``torch.cat``) are charged to the innermost module that ran them, as a row of
kind ``(functional)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from .memory import MiB, _storage_key
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
"""Layers that the layer-output count folds into the layer before (seed 003 lists none)."""


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
            raise ValueError("measured bytes are not a whole number per image; measure at a larger batch")
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
        """Per layer type at the measured batch: (kind, count bytes, measured bytes, measured - count)."""
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


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _numel_per_image(t: Any) -> tuple[tuple[int, ...], int]:
    if isinstance(t, Tensor):
        shape = tuple(t.shape[1:])
        return shape, math.prod(shape)
    if isinstance(t, (tuple, list)) and t and isinstance(t[0], Tensor):
        return _numel_per_image(t[0])
    return (), 0


def _unit_kept(module: nn.Module, x: Tensor, y: Tensor, units: tuple[type, ...]) -> int | None:
    """Per-image kept count if ``module`` is one row, else None."""
    if isinstance(module, ReversibleSequence):
        if module.mode == "reversible":
            return 0
        if module.mode == "checkpoint":
            return max(len(module.blocks) - 1, 0) * _numel_per_image(y)[1]
        return None
    method = getattr(module, "kept_activations", None)
    if callable(method):
        value = method(x, y)
        if value is not None:
            return int(value)
    if units and isinstance(module, units):
        return _numel_per_image(y)[1]
    return None


def memory_table(
    model: nn.Module,
    example: Tensor,
    units: Iterable[type] = (),
    skip: Sequence[type] = SKIP_TYPES,
) -> MemoryTable:
    """Run ``model(example)`` once with gradients on and tabulate, per layer, what it keeps.

    Args:
        model: the network, in the train/eval mode and backward mode to measure.
        example: an input batch; its batch size scales the measured bytes
            (``MemoryTable.measured_at`` extrapolates to other batch sizes).
        units: module types to list as one row each (kept: their output).
        skip: layer types whose output the layer-output count does not keep.

    The graph is discarded after the forward. BatchNorm running statistics are
    updated as in any training forward; pass a copy of the model if that matters.
    """
    units = tuple(units)
    skip = tuple(skip)
    owned = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    names = {m: n or "(model)" for n, m in model.named_modules()}

    rows: dict[nn.Module, LayerRow] = {}
    order: list[nn.Module] = []
    functional: dict[nn.Module, LayerRow] = {}
    stack: list[nn.Module] = []
    collapsed_depth = 0  # > 0 while inside a module that is one row
    is_row: dict[nn.Module, bool] = {}
    seen: set = set()
    fixed = 0
    handles = []

    def pre(module, args):
        nonlocal collapsed_depth
        stack.append(module)
        if collapsed_depth:
            collapsed_depth += 1

    def post(module, args, output):
        nonlocal collapsed_depth
        x = args[0] if args else None
        inside = collapsed_depth > 1  # within a module already listed as one row
        if collapsed_depth:
            collapsed_depth -= 1
        stack.pop()
        if inside:
            return
        kept = _unit_kept(module, x, output, units)
        leaf = len(list(module.children())) == 0
        if kept is None and not leaf:
            return
        shape, numel = _numel_per_image(output)
        if kept is None:
            kept = 0 if isinstance(module, skip) else numel
        row = rows.get(module)
        if row is None:  # a module called twice gets one row, its counts added
            row = rows[module] = LayerRow(names.get(module, "?"), type(module).__name__, shape, _own_params(module), 0)
            order.append(module)
        row.kept += kept

    def pre_unit(module, args):
        # Called after ``pre``: a module that will be one row swallows its children.
        nonlocal collapsed_depth
        if collapsed_depth == 0 and is_row.get(module):
            collapsed_depth = 1

    def charge(t: Tensor) -> Tensor:
        nonlocal fixed
        if isinstance(t, nn.Parameter):
            return t
        key = _storage_key(t)
        if key in owned or key in seen:
            return t
        seen.add(key)
        nbytes = t.untyped_storage().nbytes()
        # The outermost module listed as one row gets it, else the leaf running it.
        target = next((m for m in stack if is_row.get(m)), None)
        if target is None and stack and len(list(stack[-1].children())) == 0:
            target = stack[-1]
        if target is None:
            owner = stack[-1] if stack else model
            row = functional.get(owner)
            if row is None:
                row = functional[owner] = LayerRow(names.get(owner, "?") + " (ops)", "(functional)", (), 0, 0)
            row.saved_bytes += nbytes
            row.saved.append((tuple(t.shape), str(t.dtype).replace("torch.", "")))
            return t
        pending.setdefault(target, []).append((nbytes, tuple(t.shape), str(t.dtype).replace("torch.", "")))
        if t.dim() == 1 and isinstance(target, nn.modules.batchnorm._BatchNorm):
            fixed += nbytes
        return t

    pending: dict[nn.Module, list] = {}

    # Which non-leaf modules are one row is decided when their forward starts.
    def mark(module, args):
        if isinstance(module, ReversibleSequence):
            is_row[module] = module.mode != "autograd"
        elif callable(getattr(module, "kept_activations", None)):
            mode = getattr(module, "mode", None)
            if mode is None and hasattr(module, "blocks") and isinstance(module.blocks, ReversibleSequence):
                mode = module.blocks.mode
            is_row[module] = mode != "autograd"
        elif units and isinstance(module, units):
            is_row[module] = True
        else:
            is_row[module] = False

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(mark))
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_pre_hook(pre_unit))
        handles.append(m.register_forward_hook(post))
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(charge, lambda t: t):
            out = model(example)
        del out
    finally:
        for h in handles:
            h.remove()

    for module, items in pending.items():
        row = rows.get(module)
        if row is None:  # saved inside a module that produced no row (should not happen)
            row = rows[module] = LayerRow(names.get(module, "?"), type(module).__name__, (), 0, 0)
            order.append(module)
        for nbytes, shape, dtype in items:
            row.saved_bytes += nbytes
            row.saved.append((shape, dtype))

    ordered = [rows[m] for m in order] + list(functional.values())
    measured = sum(r.saved_bytes for r in ordered)
    return MemoryTable(ordered, int(example.shape[0]), measured, fixed)
