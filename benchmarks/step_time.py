"""Time one training step of a RevNet-like stack in each backward mode of revlib.ReversibleSequence.

A stack of ``--depth`` AdditiveCoupling blocks on ``--width`` channels, F and G
each BN-ReLU-conv3x3-BN-ReLU-conv3x3 on half the channels (the pre-activation
basic block of the official RevNet code). One step is forward, backward of
mean(y^2) and an SGD update. The modes are timed interleaved (so a change in
the machine's load hits all of them alike), after warm-up steps, and the median
of ``--repeats`` steps is reported, with the ratios reversible/autograd and
checkpoint/autograd (of the medians, and the median of the ratios within a round) and the bytes each mode saves for the backward
(revlib.core.memory.saved_tensor_bytes; on CUDA also the allocator's peak).

    python benchmarks/step_time.py                      # CPU defaults, well under a minute
    python benchmarks/step_time.py --device cuda --batch 128 --size 32 --depth 18

Writes benchmarks/results/step_time_<device>.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import revlib
from common import run_metadata, sync, write_result
from revlib.core.memory import cuda_peak_bytes, saved_tensor_bytes



def preact_half(channels: int) -> nn.Sequential:
    """F or G: BN-ReLU-conv3x3-BN-ReLU-conv3x3 on one half of the channels."""
    return nn.Sequential(
        nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
    )


def revnet_stack(depth: int, width: int) -> revlib.ReversibleSequence:
    if width % 2:
        raise SystemExit(f"--width must be even (two halves), got {width}")
    return revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(preact_half(width // 2), preact_half(width // 2)) for _ in range(depth)]
    )


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device) if args.device else revlib.default_device()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = revnet_stack(args.depth, args.width).to(device)
    x = torch.randn(args.batch, args.width, args.size, args.size, device=device)

    models, optimizers = {}, {}
    for mode in revlib.MODES:
        models[mode] = copy.deepcopy(base)
        models[mode].mode = mode
        optimizers[mode] = torch.optim.SGD(models[mode].parameters(), lr=0.01, momentum=0.9)

    def step(mode: str) -> None:
        optimizers[mode].zero_grad(set_to_none=True)
        models[mode](x).square().mean().backward()
        optimizers[mode].step()

    for _ in range(args.warmup):
        for mode in revlib.MODES:
            step(mode)
    times: dict[str, list[float]] = {mode: [] for mode in revlib.MODES}
    for _ in range(args.repeats):
        for mode in revlib.MODES:
            sync(device)
            start = time.perf_counter()
            step(mode)
            sync(device)
            times[mode].append(time.perf_counter() - start)

    saved = {mode: saved_tensor_bytes(models[mode], x) for mode in revlib.MODES}
    peak = None
    if device.type == "cuda":
        peak = {mode: cuda_peak_bytes(lambda m=mode: step(m), device) for mode in revlib.MODES}

    medians = {mode: statistics.median(t) for mode, t in times.items()}

    def paired(mode: str) -> float:
        return statistics.median(a / b for a, b in zip(times[mode], times["autograd"]))

    return {
        "benchmark": "step_time",
        "what": "one training step (forward, backward of mean(y^2), SGD update) of a stack of "
        "AdditiveCoupling blocks, F and G = BN-ReLU-conv3x3-BN-ReLU-conv3x3 on half the channels",
        **run_metadata(device),
        "depth": args.depth,
        "width": args.width,
        "batch": args.batch,
        "size": args.size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "median_seconds": medians,
        "min_seconds": {mode: min(t) for mode, t in times.items()},
        "all_seconds": times,
        "ratio_reversible_to_autograd": medians["reversible"] / medians["autograd"],
        "ratio_checkpoint_to_autograd": medians["checkpoint"] / medians["autograd"],
        # the ratio within each round (steps back to back), median over rounds: less sensitive to load drift
        "paired_ratio_reversible_to_autograd": paired("reversible"),
        "paired_ratio_checkpoint_to_autograd": paired("checkpoint"),
        "saved_bytes": saved,
        "cuda_peak_bytes": peak,
        "note": "medians of interleaved repeats after warm-up; CPU timings depend on the machine's load",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=8, help="number of reversible blocks (default 8)")
    parser.add_argument("--width", type=int, default=32, help="channels, split into two halves (default 32)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--size", type=int, default=16, help="height and width of the input (default 16)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per mode (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first (default 2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: revlib.default_device())")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/step_time_<device>.json)")
    args = parser.parse_args(argv)

    result = run(args)
    print(
        f"{result['device']}, torch {result['torch']}, {result['threads']} threads; depth {args.depth}, "
        f"width {args.width}, batch {args.batch}, {args.size}x{args.size}; median of {args.repeats} after {args.warmup} warm-up"
    )
    print(f"{'mode':12s} {'median ms':>10s} {'ratio':>7s} {'saved MiB':>10s}")
    for mode in revlib.MODES:
        med = result["median_seconds"][mode]
        print(
            f"{mode:12s} {1000 * med:10.1f} {med / result['median_seconds']['autograd']:7.2f} "
            f"{result['saved_bytes'][mode] / 2**20:10.2f}"
        )
    out = write_result(result, args.out, "step_time")
    print(
        f"ratios of medians: reversible/autograd {result['ratio_reversible_to_autograd']:.2f}, "
        f"checkpoint/autograd {result['ratio_checkpoint_to_autograd']:.2f}; median paired ratios: "
        f"{result['paired_ratio_reversible_to_autograd']:.2f}, {result['paired_ratio_checkpoint_to_autograd']:.2f}"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
