"""Time a training step of the book's models (RevNet, ResNet, Rev-VGG, VGG-19) in each
backward mode.

One step is forward, cross-entropy on random labels, backward and an SGD
update (momentum 0.9). For every model the modes are timed interleaved (so a
change in the machine's load hits them alike) after warm-up steps; the median
of ``--repeats`` steps is reported with the ratios reversible/autograd and
checkpoint/autograd, and the bytes each mode saves for the backward
(revlib.core.memory.saved_tensor_bytes at the same batch; on CUDA also the
allocator's peak during a step). ResNets and VGG-19 have one mode, autograd;
their rows give the time and memory of the RevNet of equal parameter count.

    python benchmarks/models.py                  # CPU defaults: batch 8, a few minutes at most
    python benchmarks/models.py --device cuda --batch 128 --repeats 20
    python benchmarks/models.py --models revnet38 resnet32 --batch 4

Writes benchmarks/results/models_<device>.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
from common import add_run_options, run_metadata, time_interleaved, write_result
from torch import nn

import revlib
from revlib.core.memory import cuda_peak_bytes, saved_tensor_bytes
from revlib.models import count_parameters, rev_vgg, set_mode, vgg19
from revlib.models import revnet as R

BUILDERS = {
    "resnet32": R.resnet32,
    "revnet38": R.revnet38,
    "resnet110": R.resnet110,
    "revnet110": R.revnet110,
    "resnet164": R.resnet164,
    "revnet164": R.revnet164,
    "vgg19": vgg19,
    "rev_vgg": rev_vgg,
}
REVERSIBLE = {"revnet38", "revnet110", "revnet164", "rev_vgg"}
# the non-reversible model of about the same parameter count
BASELINE = {
    "revnet38": "resnet32",
    "revnet110": "resnet110",
    "revnet164": "resnet164",
    "rev_vgg": "vgg19",
}


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(args.seed)
    base = BUILDERS[name](num_classes=10).to(device).train()
    modes = list(revlib.MODES) if name in REVERSIBLE else ["autograd"]
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    models, optimizers = {}, {}
    for mode in modes:
        models[mode] = copy.deepcopy(base)
        if name in REVERSIBLE:
            set_mode(models[mode], mode)
        optimizers[mode] = torch.optim.SGD(models[mode].parameters(), lr=0.01, momentum=0.9)

    def step(mode: str) -> None:
        optimizers[mode].zero_grad(set_to_none=True)
        nn.functional.cross_entropy(models[mode](x), labels).backward()
        optimizers[mode].step()

    times, _ = time_interleaved(step, modes, device, args.warmup, args.repeats)
    saved = {mode: saved_tensor_bytes(models[mode], x) for mode in modes}
    peak = None
    if device.type == "cuda":
        peak = {mode: cuda_peak_bytes(lambda m=mode: step(m), device) for mode in modes}
    medians = {mode: statistics.median(t) for mode, t in times.items()}
    row = {
        "parameters": count_parameters(base),
        "modes": modes,
        "median_seconds": medians,
        "all_seconds": times,
        "saved_bytes": saved,
        "cuda_peak_bytes": peak,
    }
    if name in REVERSIBLE:

        def paired(mode: str) -> float:
            return statistics.median(
                a / b for a, b in zip(times[mode], times["autograd"], strict=True)
            )

        row.update(
            {
                "time_ratio_reversible_to_autograd": medians["reversible"] / medians["autograd"],
                "time_ratio_checkpoint_to_autograd": medians["checkpoint"] / medians["autograd"],
                "paired_time_ratio_reversible_to_autograd": paired("reversible"),
                "paired_time_ratio_checkpoint_to_autograd": paired("checkpoint"),
                "saved_ratio_reversible_to_autograd": saved["reversible"] / saved["autograd"],
                "saved_ratio_checkpoint_to_autograd": saved["checkpoint"] / saved["autograd"],
            }
        )
    return row


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device) if args.device else revlib.default_device()
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [m for m in args.models if m not in BUILDERS]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {sorted(BUILDERS)}")
    results = {}
    metadata = run_metadata(device)  # starts the load watch: every model's timing is covered
    for name in args.models:
        start = time.perf_counter()
        results[name] = bench_model(name, args, device)
        print(f"  {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    against_baseline = {}
    for name, base in BASELINE.items():
        if name in results and base in results:
            against_baseline[f"{name}/{base}"] = {
                "time_reversible_to_baseline": results[name]["median_seconds"]["reversible"]
                / results[base]["median_seconds"]["autograd"],
                "saved_reversible_to_baseline": results[name]["saved_bytes"]["reversible"]
                / results[base]["saved_bytes"]["autograd"],
            }
    return {
        "benchmark": "models",
        "what": "one training step (forward, cross-entropy, backward, SGD momentum update) on "
        "random 32x32 RGB images, per model and backward mode",
        **metadata,
        "batch": args.batch,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "models": results,
        "reversible_vs_baseline": against_baseline,
        "note": "medians of interleaved repeats after warm-up; CPU timings depend on the "
        "machine's load. " + (args.note or ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(BUILDERS),
        help=f"models to time (default all: {' '.join(BUILDERS)})",
    )
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per mode (default 5)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed steps per mode first (default 1)"
    )
    add_run_options(parser, "models")
    args = parser.parse_args(argv)

    result = run(args)
    print(
        f"{result['device']}, torch {result['torch']}, {result['threads']} threads; "
        f"batch {args.batch}, 32x32; median of {args.repeats} after {args.warmup} warm-up"
    )
    print(
        f"{'model':10s} {'mode':11s} {'params':>10s} {'median ms':>10s} {'t/autograd':>10s} "
        f"{'saved MiB':>10s} {'s/autograd':>10s}"
    )
    for name, row in result["models"].items():
        t0 = row["median_seconds"]["autograd"]
        s0 = row["saved_bytes"]["autograd"]
        for mode in row["modes"]:
            t = row["median_seconds"][mode]
            s = row["saved_bytes"][mode]
            print(
                f"{name:10s} {mode:11s} {row['parameters']:10,d} {1000 * t:10.1f} {t / t0:10.2f} "
                f"{s / 2**20:10.2f} {s / s0:10.3f}"
            )
    for pair, r in result["reversible_vs_baseline"].items():
        print(
            f"{pair}: time {r['time_reversible_to_baseline']:.2f}x, "
            f"saved bytes {r['saved_reversible_to_baseline']:.3f}x"
        )
    out = write_result(result, args.out, "models")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
