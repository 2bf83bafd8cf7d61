"""How much of a reversible step's distance from its floor is revlib's engine.

``step_time.py`` measures each reversible step against its floor, an autograd
step plus one forward without a graph. This script splits what lies above the
floor: revlib's engine is timed beside Algorithm 1 of Gomez et al. (2017) with
no engine at all (a custom autograd function per block, F and G called
directly, none of revlib's checks, tapes or guards), on the same stack. What the
bare Algorithm 1 pays above the floor belongs to the algorithm as run; what the
engine pays above the bare one is the engine's own work. The variants, in one
interleaved run:

* ``autograd``, ``floor``, ``reversible`` (revlib's engine), ``algorithm1`` (bare): eager;
* ``compiled_autograd``, ``compiled_floor``, ``compiled_reversible``: ``torch.compile(model)``;
* ``compiled_algorithm1``: the bare Algorithm 1 with the structure revlib's
  engine has under ``torch.compile`` for a block that does not qualify for one
  graph per step: each block's forward one compiled graph, F and G compiled one
  at a time in the backward step, ``torch.autograd.grad`` between them;
* ``compiled_one_graph``: the bare Algorithm 1 with each backward step one
  compiled graph (both vector-Jacobian products inside it, through
  ``torch.func.vjp``: revlib's ``_additive_step``), so the compiler may fuse the
  step's arithmetic with F and G; the halves handed between steps contiguous;
* ``compiled_one_graph_cl``: the same with the tensors channels-last from block
  to block, forward and backward, the layout Inductor's convolutions use on the
  CPU: the structure revlib's engine has under ``torch.compile`` for a chain of
  such blocks (``revlib.core.compiled``).

    python benchmarks/engine_share.py --threads 2   # --out: the file's path

The stack and the timing are ``step_time.py``'s (one step: forward, backward
of mean(y^2), SGD update; medians of interleaved rounds; paired ratios with
95 % bootstrap intervals); a loaded machine gives no file (``common.py``). The
committed run, ``results/engine_share_cpu_amd_epyc.json``, is from an AMD EPYC.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from typing import Any

import torch
from common import (
    add_run_options,
    add_stack_options,
    compile_from_scratch,
    print_setting,
    run_metadata,
    stack_setting,
    time_interleaved,
    write_result,
)
from step_time import AutogradPlusForward, CompiledVariant, bootstrap_median, halves
from torch import nn

import revlib
from revlib.core.compiled import _additive_step  # the one-graph step, checks aside


def _block_forward(f: nn.Module, g: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=1)
    y1 = x1 + f(x2)
    return torch.cat([y1, x2 + g(y1)], dim=1)


def _call(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return fn(x)


class _Compiled:
    """The compiled functions, made once per process (modules are arguments, so the blocks
    share graphs, as in revlib's engine)."""

    forward = torch.compile(_block_forward)
    call = torch.compile(_call)
    step = torch.compile(_additive_step, fullgraph=True)


class _NoRunningStats:
    """Batch norms use batch statistics and leave their running statistics alone (the replay
    must not update them twice)."""

    def __init__(self, *modules: nn.Module) -> None:
        self.norms = [m for mod in modules for m in mod.modules() if isinstance(m, nn.BatchNorm2d)]

    def __enter__(self) -> None:
        for m in self.norms:
            m.track_running_stats = False

    def __exit__(self, *exc: object) -> None:
        for m in self.norms:
            m.track_running_stats = True


class BareBlock(torch.autograd.Function):
    """One block of Algorithm 1: a forward without a graph; a backward that rebuilds the input
    from the output (handed down by the next block's backward) and returns the gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, chain: BareChain, i: int, *params: torch.Tensor):
        f, g = chain.fs[i], chain.gs[i]
        with torch.no_grad():
            y = _Compiled.forward(f, g, x) if chain.kind != "eager" else _block_forward(f, g, x)
        ctx.chain, ctx.i = chain, i
        if i == len(chain.fs) - 1:
            ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):
        chain, i = ctx.chain, ctx.i
        f, g = chain.fs[i], chain.gs[i]
        if i == len(chain.fs) - 1:
            y1, y2 = (h.contiguous() for h in ctx.saved_tensors[0].chunk(2, dim=1))
        else:
            y1, y2 = chain.rebuilt.pop(i)
        with _NoRunningStats(f, g):
            if chain.kind.startswith("one_graph"):
                if chain.kind == "one_graph_cl":
                    y1, y2, dy = (
                        t.contiguous(memory_format=torch.channels_last) for t in (y1, y2, dy)
                    )
                detached = [{k: p.detach() for k, p in m.named_parameters()} for m in (f, g)]
                x1, x2, dx, f_grads, g_grads = _Compiled.step(f, g, *detached, y1, y2, dy)
                f_grads, g_grads = list(f_grads.values()), list(g_grads.values())
            else:
                x1, x2, dx, f_grads, g_grads = _step(chain.kind, f, g, y1, y2, dy)
        chain.rebuilt[i - 1] = (x1, x2)
        return (dx, None, None, *f_grads, *g_grads)


def _step(kind: str, f: nn.Module, g: nn.Module, y1, y2, dy):
    """One step of Algorithm 1 with autograd per sub-function (compiled one at a time, or
    eager)."""
    run = _Compiled.call if kind == "compiled" else _call
    dy1, dy2 = dy.chunk(2, dim=1)
    with torch.enable_grad():
        z1 = y1.detach().requires_grad_(True)
        g_out = run(g, z1)
        dz1_from_g, *g_grads = torch.autograd.grad(g_out, [z1, *g.parameters()], dy2)
        x2 = (y2 - g_out.detach()).requires_grad_(True)
        dz1 = dy1 + dz1_from_g
        f_out = run(f, x2)
        dx2_from_f, *f_grads = torch.autograd.grad(f_out, [x2, *f.parameters()], dz1)
    x1 = y1 - f_out.detach()
    return x1, x2.detach(), torch.cat([dz1, dy2 + dx2_from_f], dim=1), f_grads, g_grads


class BareChain(nn.Module):
    """A chain of additive couplings trained by the bare Algorithm 1; ``kind``: "eager",
    "compiled" (F and G compiled one at a time), "one_graph" (each backward step one graph) or
    "one_graph_cl" (the same, the tensors channels-last from block to block)."""

    def __init__(self, pairs: list[tuple[nn.Module, nn.Module]], kind: str) -> None:
        super().__init__()
        self.fs = nn.ModuleList([f for f, _ in pairs])
        self.gs = nn.ModuleList([g for _, g in pairs])
        self.kind = kind
        self.rebuilt: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        carry = self.kind == "one_graph_cl"  # channels-last from block to block, as revlib's
        h = x.contiguous(memory_format=torch.channels_last) if carry else x
        for i, (f, g) in enumerate(zip(self.fs, self.gs, strict=True)):
            h = BareBlock.apply(h, self, i, *f.parameters(), *g.parameters())
        return h.contiguous() if carry else h

    def ordered_parameters(self) -> list[nn.Parameter]:
        """The parameters in the order of a revlib chain of the same pairs (F, G per block)."""
        return [
            p
            for f, g in zip(self.fs, self.gs, strict=True)
            for p in (*f.parameters(), *g.parameters())
        ]


def build_variants(args: argparse.Namespace) -> dict[str, nn.Module]:
    torch.manual_seed(args.seed)
    pairs = halves(args.depth, args.width)

    def revlib_chain(mode: str) -> nn.Module:
        blocks = [revlib.AdditiveCoupling(*copy.deepcopy(pair)) for pair in pairs]
        return revlib.ReversibleSequence(blocks, mode=mode)

    eager = {
        "autograd": revlib_chain("autograd"),
        "floor": AutogradPlusForward(revlib_chain("autograd")),
        "reversible": revlib_chain("reversible"),
        "algorithm1": BareChain(copy.deepcopy(pairs), "eager"),
    }
    compiled = {
        f"compiled_{n}": CompiledVariant(copy.deepcopy(eager[n]))
        for n in ("autograd", "floor", "reversible")
    }
    compiled["compiled_algorithm1"] = BareChain(copy.deepcopy(pairs), "compiled")
    compiled["compiled_one_graph"] = BareChain(copy.deepcopy(pairs), "one_graph")
    compiled["compiled_one_graph_cl"] = BareChain(copy.deepcopy(pairs), "one_graph_cl")
    return {**eager, **compiled}


def _gradients(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    model = copy.deepcopy(model)
    model(x).square().mean().backward()
    inner = model.model if isinstance(model, CompiledVariant) else model
    params = inner.ordered_parameters() if isinstance(inner, BareChain) else inner.parameters()
    return [p.grad for p in params]


def gradient_differences(models: dict[str, nn.Module], x: torch.Tensor) -> dict[str, float]:
    """The largest absolute difference between each bare variant's parameter gradients and
    revlib's (eager against eager, compiled against compiled), relative to the largest
    gradient."""
    out = {}
    for bare, ref in [
        ("algorithm1", "reversible"),
        ("compiled_algorithm1", "compiled_reversible"),
        ("compiled_one_graph", "compiled_reversible"),
        ("compiled_one_graph_cl", "compiled_reversible"),
    ]:
        a, b = _gradients(models[bare], x), _gradients(models[ref], x)
        scale = max(t.abs().max().item() for t in b)
        out[bare] = max((s - t).abs().max().item() for s, t in zip(a, b, strict=True)) / scale
    return out


PAIRS = {
    "reversible": "floor",
    "algorithm1": "floor",
    "compiled_reversible": "compiled_floor",
    "compiled_algorithm1": "compiled_floor",
    "compiled_one_graph": "compiled_floor",
    "compiled_one_graph_cl": "compiled_floor",
    "floor": "autograd",
    "compiled_floor": "compiled_autograd",
}
"""Each paired ratio the run reports: numerator, denominator (a step of each in every round)."""
PAIRS_ENGINE = {"reversible": "algorithm1", "compiled_reversible": "compiled_one_graph_cl"}
"""The engine's own share: revlib's engine against the bare Algorithm 1 of the same structure."""


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    compile_from_scratch()
    models = build_variants(args)
    names = list(models)
    torch.manual_seed(args.seed + 1)
    x = torch.randn(args.batch, args.width, args.size, args.size)
    differences = gradient_differences(models, x)
    optimizers = {
        n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for n, m in models.items()
    }

    def step(name: str) -> None:
        optimizers[name].zero_grad(set_to_none=True)
        models[name](x.clone()).square().mean().backward()
        optimizers[name].step()

    for name in names:  # graphs are made on first use: two steps each before the warm-up
        step(name)
        step(name)
    metadata = run_metadata(torch.device("cpu"))
    times, _ = time_interleaved(step, names, torch.device("cpu"), args.warmup, args.repeats)
    medians = {n: statistics.median(t) for n, t in times.items()}
    paired, intervals = {}, {}
    for top, bottom in [*PAIRS.items(), *PAIRS_ENGINE.items()]:
        key = f"{top}/{bottom}"
        rounds = [a / b for a, b in zip(times[top], times[bottom], strict=True)]
        paired[key], intervals[key] = statistics.median(rounds), bootstrap_median(rounds)
    return {
        "benchmark": "engine_share",
        "what": "one training step (forward, backward of mean(y^2), SGD update) of a stack of "
        "additive coupling blocks, F and G = BN-ReLU-conv3x3-BN-ReLU-conv3x3 on half the "
        "channels: revlib's engine against Algorithm 1 with no engine",
        **metadata,
        **stack_setting(args),
        "variants": names,
        "median_seconds": medians,
        "ratio_to_autograd": {n: medians[n] / medians["autograd"] for n in names},
        "ratio_to_compiled_autograd": {
            n: medians[n] / medians["compiled_autograd"] for n in names if "compiled" in n
        },
        "paired_ratio": paired,
        "paired_ratio_95_interval": intervals,
        "float32_gradient_difference_to_revlib": differences,
        "all_seconds": times,
        "note": "medians of interleaved repeats (rotating order) after warm-up. " + args.note,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_stack_options(parser, repeats=40)
    add_run_options(parser, "engine_share")
    args = parser.parse_args(argv)
    if args.device not in (None, "cpu"):
        raise SystemExit("engine_share.py: CPU only (the bare chains are written for it)")
    started = time.perf_counter()
    result = run(args)
    print_setting(result, args)
    for key, value in result["paired_ratio"].items():
        low, high = result["paired_ratio_95_interval"][key]
        print(f"{key:42s} {value:.3f} ({low:.3f}-{high:.3f})")
    for n, r in result["ratio_to_compiled_autograd"].items():
        print(f"{n:30s} / compiled_autograd (ratio of medians) {r:.2f}")
    print("gradients, largest difference to revlib's / largest gradient:")
    for n, d in result["float32_gradient_difference_to_revlib"].items():
        print(f"  {n:28s} {d:.1e}")
    path = write_result(result, args.out, "engine_share")
    print(f"{time.perf_counter() - started:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
