"""Time one training step of a RevNet-like stack: revlib's modes, its engine before the safety work, MemCNN.

A stack of ``--depth`` additive coupling blocks on ``--width`` channels, F and
G each BN-ReLU-conv3x3-BN-ReLU-conv3x3 on half the channels (the
pre-activation basic block of the official RevNet code). One step is forward,
backward of mean(y^2) and an SGD update. The variants, side by side in one run:

* ``autograd``: revlib, mode "autograd" (everything stored; the reference);
* ``reversible``: revlib, mode "reversible", default (safe) settings;
* ``reversible_no_rng``: the same with ``preserve_rng_state=False`` (the opt-out);
* ``reversible_before``: the engine as it was before the "never a silently
  wrong gradient" work (git revision ``--before``, loaded from git into a
  temporary package; skipped when git or the revision is missing);
* ``checkpoint``: revlib, mode "checkpoint" (torch.utils.checkpoint per block);
* ``memcnn``: MemCNN 1.5.2's ``InvertibleModuleWrapper(AdditiveCoupling(F, G))``
  per block, when installed (optional: ``pip install --no-deps memcnn==1.5.2``;
  not a dependency of revlib).

The variants are timed interleaved, in a rotating order, after warm-up steps
(so a change in the machine's load hits all of them alike); the median of
``--repeats`` steps is reported, with each variant's ratio to autograd (ratio of
medians, the median of the per-round ratios, and the ratio of the median CPU
times of the process, which other processes' load disturbs less), and the bytes each revlib mode
saves for the backward (revlib.core.memory.saved_tensor_bytes; on CUDA also the
allocator's peak).

    python benchmarks/step_time.py --threads 2          # the CPU setting of the results file
    python benchmarks/step_time.py --device cuda --batch 128 --depth 18

Writes benchmarks/results/step_time_<device>.json (``--out`` to change). CPU
timings depend on the machine's load: compare ratios from one run only.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import revlib
from common import run_metadata, write_result
from revlib.core.device import synchronize
from revlib.core.memory import cuda_peak_bytes, saved_tensor_bytes

REPO = Path(__file__).resolve().parent.parent
ENGINE_FILES = ("blocks", "recompute", "sequence", "couplings", "modes")


def preact_half(channels: int) -> nn.Sequential:
    """F or G: BN-ReLU-conv3x3-BN-ReLU-conv3x3 on one half of the channels."""
    return nn.Sequential(
        nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
    )


def halves(depth: int, width: int) -> list[tuple[nn.Module, nn.Module]]:
    if width % 2:
        raise SystemExit(f"--width must be even (two halves), got {width}")
    return [(preact_half(width // 2), preact_half(width // 2)) for _ in range(depth)]


def engine_before(revision: str):
    """revlib's engine modules at ``revision`` as a temporary package, or None if git cannot give them."""
    target = Path(tempfile.mkdtemp(prefix="revlib_before_")) / "revlib_before_core"
    target.mkdir()
    (target / "__init__.py").write_text("")
    try:
        for name in ENGINE_FILES:
            source = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{revision}:revlib/core/{name}.py"],
                check=True, capture_output=True, text=True,
            ).stdout
            (target / f"{name}.py").write_text(source)
    except (OSError, subprocess.CalledProcessError):
        return None
    sys.path.insert(0, str(target.parent))
    return importlib.import_module("revlib_before_core")


def memcnn_stack(pairs):
    """MemCNN's invertible wrapper around its additive coupling, per block; None if MemCNN is missing."""
    try:
        import memcnn
    except ImportError:
        return None
    return nn.Sequential(*[
        memcnn.InvertibleModuleWrapper(memcnn.AdditiveCoupling(Fm=f, Gm=g), keep_input=False, keep_input_inverse=False)
        for f, g in pairs
    ])


def build_variants(args: argparse.Namespace, device: torch.device) -> dict[str, nn.Module]:
    torch.manual_seed(args.seed)
    pairs = halves(args.depth, args.width)
    models: dict[str, nn.Module] = {}

    def revlib_chain(mode: str, **kwargs) -> nn.Module:
        blocks = [revlib.AdditiveCoupling(*copy.deepcopy(pair)) for pair in pairs]
        return revlib.ReversibleSequence(blocks, mode=mode, **kwargs)

    models["autograd"] = revlib_chain("autograd")
    models["reversible"] = revlib_chain("reversible")
    models["reversible_no_rng"] = revlib_chain("reversible", preserve_rng_state=False)
    before = engine_before(args.before) if args.before else None
    if before is not None:
        from revlib_before_core.couplings import AdditiveCoupling as BeforeCoupling
        from revlib_before_core.sequence import ReversibleSequence as BeforeSequence

        models["reversible_before"] = BeforeSequence([BeforeCoupling(*copy.deepcopy(p)) for p in pairs])
    models["checkpoint"] = revlib_chain("checkpoint")
    memcnn_model = memcnn_stack([copy.deepcopy(p) for p in pairs])
    if memcnn_model is not None:
        models["memcnn"] = memcnn_model
    return {name: m.to(device) for name, m in models.items()}


def same_gradients(models: dict[str, nn.Module], x: torch.Tensor) -> dict[str, bool]:
    """Whether each revlib variant's float64 parameter gradients equal the 'reversible' variant's bit for bit."""
    out = {}
    ref = None
    for name in ("reversible", "reversible_no_rng", "reversible_before"):
        if name not in models:
            continue
        m = copy.deepcopy(models[name]).double()
        m(x.double()).square().mean().backward()
        grads = [p.grad for p in m.parameters()]
        ref = grads if ref is None else ref
        out[name] = all(torch.equal(a, b) for a, b in zip(grads, ref))
    return out


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device) if args.device else revlib.default_device()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    models = build_variants(args, device)
    names = list(models)
    torch.manual_seed(args.seed + 1)
    x = torch.randn(args.batch, args.width, args.size, args.size, device=device)
    optimizers = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for n, m in models.items()}

    def step(name: str) -> None:
        optimizers[name].zero_grad(set_to_none=True)
        models[name](x.clone()).square().mean().backward()  # a fresh input: MemCNN frees its block inputs
        optimizers[name].step()

    for _ in range(args.warmup):
        for name in names:
            step(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            step(name)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - start_cpu)

    revlib_names = [n for n in names if n != "memcnn"]
    saved = {n: saved_tensor_bytes(models[n], x) for n in revlib_names}
    peak = {n: cuda_peak_bytes(lambda n=n: step(n), device) for n in names} if device.type == "cuda" else None
    medians = {n: statistics.median(t) for n, t in times.items()}
    ratio = {n: medians[n] / medians["autograd"] for n in names}
    paired = {n: statistics.median(a / b for a, b in zip(times[n], times["autograd"])) for n in names}
    # CPU time of this process (all its threads): less sensitive than wall time to other processes' load
    cpu_medians = {n: statistics.median(t) for n, t in cpu_times.items()}
    cpu_ratio = {n: cpu_medians[n] / cpu_medians["autograd"] for n in names}
    small = torch.randn(2, args.width, 8, 8, device=device)
    return {
        "benchmark": "step_time",
        "what": "one training step (forward, backward of mean(y^2), SGD update) of a stack of additive "
        "coupling blocks, F and G = BN-ReLU-conv3x3-BN-ReLU-conv3x3 on half the channels",
        **run_metadata(device),
        "depth": args.depth, "width": args.width, "batch": args.batch, "size": args.size,
        "warmup": args.warmup, "repeats": args.repeats, "before_revision": args.before,
        "variants": names,
        "median_seconds": medians,
        "ratio_to_autograd": ratio,
        "paired_ratio_to_autograd": paired,
        "median_cpu_seconds": cpu_medians,
        "cpu_time_ratio_to_autograd": cpu_ratio,
        "min_seconds": {n: min(t) for n, t in times.items()},
        "all_seconds": times,
        "float64_gradients_bit_equal_to_reversible": same_gradients(models, small),
        "saved_bytes": saved,
        "cuda_peak_bytes": peak,
        # the machine's 1-minute load average before and after: above the core count, wall times are unreliable
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "note": "medians of interleaved repeats (rotating order) after warm-up; CPU timings depend on the "
        "machine's load, so compare ratios within one run",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=9, help="number of reversible blocks (default 9)")
    parser.add_argument("--width", type=int, default=32, help="channels, split into two halves (default 32)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--size", type=int, default=32, help="height and width of the input (default 32)")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per variant (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (default 2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: revlib.default_device())")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--before", default="8abb1ff", help="git revision of the 'before' engine ('' to skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/step_time_<device>.json)")
    args = parser.parse_args(argv)

    result = run(args)
    print(
        f"{result['device']}, torch {result['torch']}, {result['threads']} threads; depth {args.depth}, "
        f"width {args.width}, batch {args.batch}, {args.size}x{args.size}; median of {args.repeats} after {args.warmup} warm-up"
    )
    print(f"{'variant':18s} {'median ms':>10s} {'ratio':>7s} {'paired':>7s} {'CPU ratio':>9s} {'saved MiB':>10s}")
    for n in result["variants"]:
        saved = result["saved_bytes"].get(n)
        print(
            f"{n:18s} {1000 * result['median_seconds'][n]:10.1f} {result['ratio_to_autograd'][n]:7.2f} "
            f"{result['paired_ratio_to_autograd'][n]:7.2f} {result['cpu_time_ratio_to_autograd'][n]:9.2f} "
            f"{'' if saved is None else f'{saved / 2**20:10.2f}'}"
        )
    print("float64 gradients bit-equal to 'reversible':", result["float64_gradients_bit_equal_to_reversible"])
    load = result["load_average_1min"]
    print(f"load average (1 min) before/after: {load['before']:.1f}/{load['after']:.1f} on {os.cpu_count()} cores")
    print(f"wrote {write_result(result, args.out, 'step_time')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
