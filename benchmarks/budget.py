"""Step time against activation memory: revlib's memory budget, checkpointing, torch.compile.

    OMP_NUM_THREADS=1 python benchmarks/budget.py --threads 1 [--model revnet38]

One training step (forward, backward of mean(y^2), SGD) of the step-time
benchmark's coupling stack (``step_time.py``) or of RevNet-38, for three
families of variants, side by side in one interleaved run
(:func:`common.time_interleaved`):

* ``budget=B``: ``ReversibleSequence(memory_budget=B)`` for fractions B from 0
  (every block reversed) to 1 (every block stored), planned before timing;
* ``checkpoint/S``: mode ``"autograd"`` under
  :func:`torch.utils.checkpoint.checkpoint_sequential` with S segments
  (non-reentrant), on the stack only;
* ``compile@B``: ``torch.compile`` of mode ``"autograd"`` with
  ``torch._functorch.config.activation_memory_budget = B``.

Each variant's memory is the bytes its step saves for backward
(:class:`revlib.core.memory.SavedTensorMeter`, parameters excluded). Writes
``results/budget_<model>_<device>.json``; refuses a loaded machine (common.py).
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable

import torch
from common import (
    add_run_options,
    compile_from_scratch,
    run_metadata,
    time_interleaved,
    write_result,
)
from step_time import halves
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

import revlib
from revlib.core.memory import SavedTensorMeter

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
SEGMENTS = (1, 2, 3)  # and one per block
COMPILE_BUDGETS = (0.1, 0.3, 0.5, 1.0)


class Segmented(nn.Module):
    """The blocks of ``seq`` (mode "autograd") under ``checkpoint_sequential`` with ``segments``."""

    def __init__(self, seq: revlib.ReversibleSequence, segments: int) -> None:
        super().__init__()
        self.seq, self.segments = seq, segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_sequential(list(self.seq.blocks), self.segments, x, use_reentrant=False)


def base_model(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(args.seed)
    if args.model == "revnet38":
        from revlib.models import revnet38

        return revnet38(num_classes=10), torch.randn(args.batch, 3, 32, 32)
    seq = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(f, g) for f, g in halves(args.depth, args.width)]
    )
    return seq, torch.randn(args.batch, args.width, args.size, args.size)


def sequences(model: nn.Module) -> list[revlib.ReversibleSequence]:
    return [m for m in model.modules() if isinstance(m, revlib.ReversibleSequence)]


def variants(args: argparse.Namespace, x: torch.Tensor) -> dict[str, Callable[[], nn.Module]]:
    base, _ = base_model(args)
    out: dict[str, Callable[[], nn.Module]] = {}

    def budgeted(fraction: float) -> nn.Module:
        m = copy.deepcopy(base)
        m.mode = "reversible"
        for seq in sequences(m):
            seq.memory_budget = fraction
        return m

    for f in FRACTIONS:
        out[f"budget={f:g}"] = lambda f=f: budgeted(f)
    if args.model == "stack":
        for s in sorted({*(s for s in SEGMENTS if s <= args.depth), args.depth}):
            out[f"checkpoint/{s}"] = lambda s=s: Segmented(_autograd(base), s)
    if args.compile:
        for b in COMPILE_BUDGETS:
            out[f"compile@{b:g}"] = lambda b=b: _compiled(_autograd(base), b)
    return out


def _autograd(base: nn.Module) -> nn.Module:
    m = copy.deepcopy(base)
    m.mode = "autograd"
    return m


class _Compiled(nn.Module):
    """``torch.compile(model)`` compiled (at its first call) under an activation memory budget."""

    def __init__(self, model: nn.Module, budget: float) -> None:
        super().__init__()
        self.model, self.budget = model, budget
        self.compiled = torch.compile(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch._functorch.config.patch(activation_memory_budget=self.budget):
            return self.compiled(x)


def _compiled(model: nn.Module, budget: float) -> nn.Module:
    return _Compiled(model, budget)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", choices=["stack", "revnet38"], default="stack")
    p.add_argument("--depth", type=int, default=9)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    add_run_options(p, "budget")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    compile_from_scratch()
    device = torch.device(args.device or "cpu")
    _, x = base_model(args)
    x = x.to(device)
    models = {name: make().to(device) for name, make in variants(args, x).items()}
    opts = {n: torch.optim.SGD(m.parameters(), lr=1e-3) for n, m in models.items()}

    def step(name: str) -> None:
        out = models[name](x.requires_grad_(False))
        (out.float() ** 2).mean().backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)

    for name in models:  # plan the budgets and compile, before anything is timed
        step(name)
    saved = {}
    for name, m in models.items():
        with SavedTensorMeter(exclude=[*m.parameters(), *m.buffers()]) as meter:
            out = m(x)
        del out
        saved[name] = meter.bytes
    result = {**run_metadata(device), "note": args.note, "args": vars(args) | {"out": None}}
    wall, cpu = time_interleaved(step, list(models), device, args.warmup, args.repeats)
    rows = {}
    for name in models:
        plans = [s.budget_plan for s in sequences(models[name]) if s.budget_plan is not None]
        rows[name] = {
            "median_s": statistics.median(wall[name]),
            "cpu_median_s": statistics.median(cpu[name]),
            "saved_bytes": saved[name],
            "stored_blocks": sum(len(pl.stored) for pl in plans),
            "wall_s": wall[name],
        }
        print(
            f"{name:14s} {rows[name]['median_s'] * 1e3:8.1f} ms  {saved[name] / 2**20:8.2f} MiB"
            + (f"  stored {rows[name]['stored_blocks']}" if plans else "")
        )
    result["variants"] = rows
    print("wrote", write_result(result, args.out, f"budget_{args.model}"))


if __name__ == "__main__":
    main()
