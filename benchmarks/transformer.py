"""Reversible ViT against the standard ViT and the per-block-checkpointed ViT, at two sequence
lengths.

Three models with the same blocks (pre-LayerNorm attention and MLP, ``--width``
features per stream, ``--depth`` blocks, revlib.models): ``standard`` (ViT,
autograd stores everything), ``checkpoint`` (ViT with each block under
torch.utils.checkpoint) and ``reversible`` (ReversibleViT, RevViT's two
streams in a revlib.ReversibleSequence). For each sequence length (the images
are ``--patch``-pixel patches of square images of the size that gives that many
tokens) one training step (forward, cross-entropy backward, SGD update) is
timed, the models interleaved, after warm-up; the median of ``--repeats``
steps is reported as a ratio to the standard model's, together with the bytes
each model saves for the backward (revlib.core.memory.saved_tensor_bytes; on
CUDA also the allocator's peak).

    python benchmarks/transformer.py                       # CPU defaults, about a minute
    python benchmarks/transformer.py --device cuda --batch 64 --depth 12 --width 192

Writes benchmarks/results/transformer_<device>.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path

import torch
from common import run_metadata, time_interleaved, write_result
from torch import nn

import revlib
from revlib.core.memory import cuda_peak_bytes, saved_tensor_bytes
from revlib.models import ReversibleViT, ViT

KINDS = ("standard", "checkpoint", "reversible")


def build(kind: str, image: int, args: argparse.Namespace) -> nn.Module:
    kw = dict(
        image_size=image,
        patch=args.patch,
        in_channels=3,
        num_classes=10,
        width=args.width,
        depth=args.depth,
        heads=args.heads,
        mlp_ratio=4.0,
    )
    torch.manual_seed(args.seed)
    if kind == "reversible":
        return ReversibleViT(**kw)
    return ViT(**kw, checkpoint_blocks=(kind == "checkpoint"))


def one_length(tokens: int, args: argparse.Namespace, device: torch.device) -> dict:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise SystemExit(f"--tokens must be square numbers, got {tokens}")
    image = side * args.patch
    models = {k: build(k, image, args).to(device) for k in KINDS}
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
    x = torch.randn(args.batch, 3, image, image, device=device)
    target = torch.randint(0, 10, (args.batch,), device=device)

    def step(kind: str) -> None:
        optimizers[kind].zero_grad(set_to_none=True)
        nn.functional.cross_entropy(models[kind](x), target).backward()
        optimizers[kind].step()

    times, _ = time_interleaved(step, list(KINDS), device, args.warmup, args.repeats)
    medians = {k: statistics.median(t) for k, t in times.items()}
    saved = {k: saved_tensor_bytes(m, x) for k, m in models.items()}
    peak = None
    if device.type == "cuda":
        peak = {k: cuda_peak_bytes(lambda k=k: step(k), device) for k in KINDS}
    return {
        "tokens": tokens,
        "image_size": image,
        "median_seconds": medians,
        "all_seconds": times,
        "step_time_ratio_to_standard": {k: medians[k] / medians["standard"] for k in KINDS},
        "paired_ratio_to_standard": {
            k: statistics.median(a / b for a, b in zip(times[k], times["standard"], strict=True))
            for k in KINDS
        },
        "saved_bytes": saved,
        "saved_ratio_to_standard": {k: saved[k] / saved["standard"] for k in KINDS},
        "cuda_peak_bytes": peak,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tokens",
        type=int,
        nargs=2,
        default=[64, 256],
        help="two sequence lengths (squares; default 64 256)",
    )
    parser.add_argument("--patch", type=int, default=4, help="patch size in pixels (default 4)")
    parser.add_argument("--width", type=int, default=64, help="features per stream (default 64)")
    parser.add_argument("--depth", type=int, default=8, help="transformer blocks (default 8)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per model (default 7)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps per model first (default 2)"
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, ... (default: revlib.default_device())"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default results/transformer_<device>.json)",
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device) if args.device else revlib.default_device()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {
        "benchmark": "transformer",
        "what": "one training step (forward, cross-entropy backward, SGD update) of a ViT: "
        "standard, checkpointed per block, reversible (RevViT)",
        **run_metadata(device),
        **{
            k: getattr(args, k)
            for k in ("patch", "width", "depth", "heads", "batch", "repeats", "warmup", "seed")
        },
        "load_average_1min": {"start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "note": "medians of interleaved repeats after warm-up; CPU timings depend on the "
        "machine's load",
    }
    result["lengths"] = [one_length(t, args, device) for t in args.tokens]
    if hasattr(os, "getloadavg"):
        result["load_average_1min"]["end"] = os.getloadavg()[0]
    print(
        f"{result['device']}, torch {result['torch']}, {result['threads']} threads; "
        f"depth {args.depth}, width {args.width}, batch {args.batch}; "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    print(
        f"{'tokens':>6s} {'model':12s} {'median ms':>10s} {'time ratio':>10s} {'paired':>7s} "
        f"{'saved MiB':>10s} {'saved ratio':>11s}"
    )
    for r in result["lengths"]:
        for k in KINDS:
            print(
                f"{r['tokens']:6d} {k:12s} {1000 * r['median_seconds'][k]:10.1f} "
                f"{r['step_time_ratio_to_standard'][k]:10.2f} "
                f"{r['paired_ratio_to_standard'][k]:7.2f} "
                f"{r['saved_bytes'][k] / 2**20:10.2f} "
                f"{r['saved_ratio_to_standard'][k]:11.3f}"
            )
    print(f"wrote {write_result(result, args.out, 'transformer')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
