"""Time one training step of a RevNet-like stack: revlib's modes, earlier versions of its
engine, MemCNN.

A stack of ``--depth`` additive coupling blocks on ``--width`` channels, F and
G each BN-ReLU-conv3x3-BN-ReLU-conv3x3 on half the channels (the
pre-activation basic block of the official RevNet code). One step is forward,
backward of mean(y^2) and an SGD update. The variants, side by side in one run:

* ``autograd``: revlib, mode "autograd" (everything stored; the reference);
* ``autograd_plus_forward``: an autograd step plus one forward of the chain
  without a graph: what a reversible step costs if its engine adds nothing but
  the recomputation (the floor of ``reversible``, "4/3" in units of F and G);
* ``reversible``: revlib, mode "reversible", default (safe) settings;
* ``reversible_no_rng``: the same with ``preserve_rng_state=False`` (the opt-out);
* ``reversible@REV``: revlib's engine at git revision ``REV`` (each of
  ``--before``, loaded from git into a temporary package; skipped when git or
  the revision is missing). The default compares with 8abb1ff (before the
  "never a silently wrong gradient" work) and 5ad9f31 (before the halves
  travelled between coupling steps);
* ``compiled_reversible@REV``: the same under ``torch.compile``, for each of
  ``--compiled-before`` (default a358f0e, the engine when issues 25-27 were
  filed);
* ``checkpoint``: revlib, mode "checkpoint" (torch.utils.checkpoint per block);
* ``memcnn``: MemCNN 1.5.2's ``InvertibleModuleWrapper(AdditiveCoupling(F, G))``
  per block, when installed (optional: ``pip install --no-deps memcnn==1.5.2``;
  not a dependency of revlib).

The variants are timed interleaved, in a rotating order, after warm-up steps
(so a change in the machine's load hits all of them alike); the median of
``--repeats`` steps is reported, with each variant's ratio to autograd (ratio of
medians, the median of the per-round ratios with a 95 % bootstrap interval, and
the ratio of the median CPU times of the process, which other processes' load
disturbs less), and the bytes each revlib mode
saves for the backward (revlib.core.memory.saved_tensor_bytes; on CUDA also the
allocator's peak).

    python benchmarks/step_time.py --threads 2          # the CPU setting of the results file
    python benchmarks/step_time.py --device cuda --batch 128 --depth 18

Writes benchmarks/results/step_time_<device>.json (``--out`` to change). CPU
timings depend on the machine's load and on the CPU: compare ratios from one run
only. The committed ``step_time_cpu.json`` is from an idle AMD EPYC with two cores;
``engine_share.py`` splits its reversible step's distance from the floor.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    add_run_options,
    compile_from_scratch,
    print_setting,
    run_metadata,
    stack_setting,
    time_interleaved,
    write_result,
)
from torch import nn

import revlib
from revlib.core.memory import cuda_peak_bytes, saved_tensor_bytes
from revlib.harness.peers import preact_half

REPO = Path(__file__).resolve().parent.parent


def halves(depth: int, width: int) -> list[tuple[nn.Module, nn.Module]]:
    if width % 2:
        raise SystemExit(f"--width must be even (two halves), got {width}")
    return [(preact_half(width // 2), preact_half(width // 2)) for _ in range(depth)]


def engine_before(revision: str):
    """revlib's engine modules at ``revision`` as a temporary package, or None if git cannot
    give them."""
    target = Path(tempfile.mkdtemp(prefix="revlib_before_")) / f"revlib_core_at_{revision}"
    target.mkdir()
    (target / "__init__.py").write_text("")
    try:
        names = subprocess.run(
            ["git", "-C", str(REPO), "ls-tree", "-r", "--name-only", revision, "revlib/core/"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        for path in names:
            inside = Path(path).relative_to("revlib/core")
            if not path.endswith(".py") or str(inside) == "__init__.py":
                continue  # the package's own __init__ imports beyond the engine
            source = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{revision}:{path}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (target / inside).parent.mkdir(parents=True, exist_ok=True)
            (target / inside).write_text(source)
    except (OSError, subprocess.CalledProcessError):
        return None
    sys.path.insert(0, str(target.parent))
    return importlib.import_module(target.name)


class AutogradPlusForward(nn.Module):
    """An autograd forward of ``chain`` preceded by a forward without a graph: the reversible
    step's floor."""

    def __init__(self, chain: nn.Module) -> None:
        super().__init__()
        self.chain = chain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.chain(x)
        return self.chain(x)


def memcnn_stack(pairs):
    """MemCNN's invertible wrapper around its additive coupling, per block; None if MemCNN is
    missing."""
    try:
        import memcnn
    except ImportError:
        return None
    return nn.Sequential(
        *[
            memcnn.InvertibleModuleWrapper(
                memcnn.AdditiveCoupling(Fm=f, Gm=g), keep_input=False, keep_input_inverse=False
            )
            for f, g in pairs
        ]
    )


def revnet38_variants() -> dict[str, nn.Module]:
    """RevNet-38 (CIFAR-10 shape) in each mode, with one initialisation, and its floor."""
    from revlib.models import revnet38

    base = revnet38(num_classes=10)
    models = {}
    for mode in ("autograd", "reversible", "checkpoint"):
        models[mode] = copy.deepcopy(base)
        models[mode].mode = mode
    models["autograd_plus_forward"] = AutogradPlusForward(copy.deepcopy(models["autograd"]))
    return {n: models[n] for n in ("autograd", "autograd_plus_forward", "reversible", "checkpoint")}


def build_variants(args: argparse.Namespace, device: torch.device) -> dict[str, nn.Module]:
    torch.manual_seed(args.seed)
    if args.model == "revnet38":
        models = revnet38_variants()
        args.before = args.compiled_before = []
        if args.compile:
            for name in ("autograd", "autograd_plus_forward", "reversible", "checkpoint"):
                models[f"compiled_{name}"] = CompiledVariant(copy.deepcopy(models[name]))
        return {name: m.to(device) for name, m in models.items()}
    pairs = halves(args.depth, args.width)
    models: dict[str, nn.Module] = {}

    def revlib_chain(mode: str, **kwargs) -> nn.Module:
        blocks = [revlib.AdditiveCoupling(*copy.deepcopy(pair)) for pair in pairs]
        return revlib.ReversibleSequence(blocks, mode=mode, **kwargs)

    models["autograd"] = revlib_chain("autograd")
    models["autograd_plus_forward"] = AutogradPlusForward(revlib_chain("autograd"))
    models["reversible"] = revlib_chain("reversible")
    models["reversible_no_rng"] = revlib_chain("reversible", preserve_rng_state=False)
    for revision in args.before:
        before = engine_before(revision)
        if before is not None:
            sequence = importlib.import_module(f"{before.__name__}.sequence")
            coupling = importlib.import_module(f"{before.__name__}.couplings").AdditiveCoupling
            models[f"reversible@{revision}"] = sequence.ReversibleSequence(
                [coupling(*copy.deepcopy(p)) for p in pairs]
            )
    models["checkpoint"] = revlib_chain("checkpoint")
    memcnn_model = memcnn_stack([copy.deepcopy(p) for p in pairs])
    if memcnn_model is not None:
        models["memcnn"] = memcnn_model
    if args.compile:
        # torch.compile(model) as users call it; the reversible engine stays eager and compiles
        # F and G
        for name in ("autograd", "autograd_plus_forward", "reversible", "checkpoint"):
            eager = copy.deepcopy(models[name])
            models[f"compiled_{name}"] = CompiledVariant(eager)
        for revision in args.compiled_before:
            before = engine_before(revision)
            if before is not None:
                sequence = importlib.import_module(f"{before.__name__}.sequence")
                coupling = importlib.import_module(f"{before.__name__}.couplings")
                models[f"compiled_reversible@{revision}"] = CompiledVariant(
                    sequence.ReversibleSequence(
                        [coupling.AdditiveCoupling(*copy.deepcopy(p)) for p in pairs]
                    )
                )
    return {name: m.to(device) for name, m in models.items()}


class CompiledVariant(nn.Module):
    """``torch.compile(model)``, keeping the eager module for its parameters, buffers and saved
    bytes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.compiled = torch.compile(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled(x)


def same_gradients(models: dict[str, nn.Module], x: torch.Tensor) -> dict[str, bool]:
    """Whether each revlib variant's float64 parameter gradients equal the 'reversible'
    variant's bit for bit."""
    out = {}
    ref = None
    for name in [
        "reversible",
        "reversible_no_rng",
        *(n for n in models if n.startswith("reversible@")),
    ]:
        if name not in models:
            continue
        m = copy.deepcopy(models[name]).double()
        m(x.double()).square().mean().backward()
        grads = [p.grad for p in m.parameters()]
        ref = grads if ref is None else ref
        out[name] = all(torch.equal(a, b) for a, b in zip(grads, ref, strict=True))
    return out


def _floors(names: list[str]) -> dict[str, str]:
    """Each reversible variant and the floor it is measured against (eager or compiled)."""
    out = {}
    for n in names:
        compiled = n.startswith("compiled_")
        floor = "compiled_autograd_plus_forward" if compiled else "autograd_plus_forward"
        if "reversible" in n and floor in names:
            out[n] = floor
    return out


def bootstrap_median(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval for the median of ``values``."""
    gen = random.Random(seed)
    medians = sorted(statistics.median(gen.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds) - 1]


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device) if args.device else revlib.default_device()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:
        compile_from_scratch()
    load_before = os.getloadavg()
    models = build_variants(args, device)
    names = list(models)
    torch.manual_seed(args.seed + 1)
    channels = 3 if args.model == "revnet38" else args.width
    x = torch.randn(args.batch, channels, args.size, args.size, device=device)
    optimizers = {
        n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for n, m in models.items()
    }

    def step(name: str) -> None:
        optimizers[name].zero_grad(set_to_none=True)
        models[name](
            x.clone()
        ).square().mean().backward()  # a fresh input: MemCNN frees its block inputs
        optimizers[name].step()

    metadata = run_metadata(device)  # starts the load watch: everything timed below is covered
    # the compiled variants' first two steps (forward and backward graphs are made on first use),
    # timed apart
    compile_seconds = {}
    for name in (n for n in names if n.startswith("compiled_")):
        start = time.perf_counter()
        step(name)
        step(name)
        compile_seconds[name] = time.perf_counter() - start
    times, cpu_times = time_interleaved(step, names, device, args.warmup, args.repeats)

    revlib_names = [
        n
        for n in names
        if n not in ("memcnn", "autograd_plus_forward", "compiled_autograd_plus_forward")
    ]
    saved = {n: saved_tensor_bytes(models[n], x) for n in revlib_names}
    peak = (
        {n: cuda_peak_bytes(lambda n=n: step(n), device) for n in names}
        if device.type == "cuda"
        else None
    )
    medians = {n: statistics.median(t) for n, t in times.items()}
    ratio = {n: medians[n] / medians["autograd"] for n in names}
    per_round = {
        n: [a / b for a, b in zip(times[n], times["autograd"], strict=True)] for n in names
    }
    paired = {n: statistics.median(r) for n, r in per_round.items()}
    paired_interval = {n: bootstrap_median(r) for n, r in per_round.items()}
    # the engine's own cost: each reversible variant against its floor in the same round
    to_floor = {
        n: [a / b for a, b in zip(times[n], times[floor], strict=True)]
        for n, floor in _floors(names).items()
    }
    floor_paired = {n: statistics.median(r) for n, r in to_floor.items()}
    floor_interval = {n: bootstrap_median(r) for n, r in to_floor.items()}
    # CPU time of this process (all its threads): less sensitive than wall time to other
    # processes' load
    cpu_medians = {n: statistics.median(t) for n, t in cpu_times.items()}
    cpu_ratio = {n: cpu_medians[n] / cpu_medians["autograd"] for n in names}
    small = torch.randn(2, channels, 8, 8, device=device)
    compiled_names = [n for n in names if n.startswith("compiled_")]
    if compiled_names:
        base = times["compiled_autograd"]
        to_compiled = {n: medians[n] / medians["compiled_autograd"] for n in compiled_names}
        compiled_rounds = {
            n: [a / b for a, b in zip(times[n], base, strict=True)] for n in compiled_names
        }
        compiled_paired = {n: statistics.median(r) for n, r in compiled_rounds.items()}
        compiled_interval = {n: bootstrap_median(r) for n, r in compiled_rounds.items()}
    else:
        to_compiled, compiled_paired, compiled_interval = {}, {}, {}
    return {
        "benchmark": "step_time",
        "what": "one training step (forward, backward of mean(y^2), SGD update) of a stack of "
        "additive coupling blocks, F and G = BN-ReLU-conv3x3-BN-ReLU-conv3x3 on half the channels",
        **metadata,
        "model": args.model,
        **stack_setting(args),
        "before_revisions": args.before,
        "compiled_before_revisions": args.compiled_before,
        "variants": names,
        "median_seconds": medians,
        "ratio_to_autograd": ratio,
        "paired_ratio_to_autograd": paired,
        "paired_ratio_95_interval": paired_interval,
        "paired_ratio_to_floor": floor_paired,
        "paired_ratio_to_floor_95_interval": floor_interval,
        "median_cpu_seconds": cpu_medians,
        "cpu_time_ratio_to_autograd": cpu_ratio,
        "ratio_to_compiled_autograd": to_compiled,
        "paired_ratio_to_compiled_autograd": compiled_paired,
        "paired_ratio_to_compiled_autograd_95_interval": compiled_interval,
        "compile_seconds_first_two_steps": compile_seconds,
        "min_seconds": {n: min(t) for n, t in times.items()},
        "all_seconds": times,
        "float64_gradients_bit_equal_to_reversible": same_gradients(models, small),
        "saved_bytes": saved,
        "cuda_peak_bytes": peak,
        # the machine's 1-minute load average before and after: above the core count, wall times
        # are unreliable
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "note": "medians of interleaved repeats (rotating order) after warm-up; CPU timings depend "
        "on the machine's load, so compare ratios within one run. " + (args.note or ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--depth", type=int, default=9, help="number of reversible blocks (default 9)"
    )
    parser.add_argument(
        "--width", type=int, default=32, help="channels, split into two halves (default 32)"
    )
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument(
        "--size", type=int, default=32, help="height and width of the input (default 32)"
    )
    parser.add_argument(
        "--repeats", type=int, default=40, help="timed steps per variant (default 40)"
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps per variant first (default 3)"
    )
    parser.add_argument(
        "--before",
        nargs="*",
        default=["8abb1ff", "5ad9f31"],
        help="git revisions of earlier engines to time and compare bit for bit (none: --before)",
    )
    parser.add_argument(
        "--compiled-before",
        nargs="*",
        default=["a358f0e"],
        help="git revisions of earlier engines to time under torch.compile too (default: the "
        "engine when issues 25-27 were filed; none: --compiled-before)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time torch.compile(model) for autograd, the floor, reversible and checkpoint",
    )
    parser.add_argument(
        "--model",
        choices=["stack", "revnet38"],
        default="stack",
        help="the coupling stack (default) or RevNet-38 (CIFAR shape, 10 classes)",
    )
    add_run_options(parser, "step_time")
    args = parser.parse_args(argv)

    result = run(args)
    print_setting(result, args)
    print(
        f"{'variant':22s} {'median ms':>10s} {'ratio':>7s} {'paired (95 %)':>20s} "
        f"{'CPU ratio':>9s} {'saved MiB':>10s}"
    )
    for n in result["variants"]:
        saved = result["saved_bytes"].get(n)
        low, high = result["paired_ratio_95_interval"][n]
        print(
            f"{n:22s} {1000 * result['median_seconds'][n]:10.1f} "
            f"{result['ratio_to_autograd'][n]:7.2f} "
            f"{result['paired_ratio_to_autograd'][n]:7.2f} ({low:.2f}-{high:.2f}) "
            f"{result['cpu_time_ratio_to_autograd'][n]:9.2f} "
            f"{'' if saved is None else f'{saved / 2**20:10.2f}'}"
        )
    for n, r in result["paired_ratio_to_floor"].items():
        low, high = result["paired_ratio_to_floor_95_interval"][n]
        print(f"{n:30s} / its floor: paired {r:.3f} ({low:.3f}-{high:.3f})")
    for n, r in result["ratio_to_compiled_autograd"].items():
        low, high = result["paired_ratio_to_compiled_autograd_95_interval"][n]
        print(
            f"{n:30s} / compiled_autograd: {r:.2f}, "
            f"paired {result['paired_ratio_to_compiled_autograd'][n]:.2f} "
            f"({low:.2f}-{high:.2f}); "
            f"first two steps {result['compile_seconds_first_two_steps'][n]:.1f} s"
        )
    print(
        "float64 gradients bit-equal to 'reversible':",
        result["float64_gradients_bit_equal_to_reversible"],
    )
    load = result["load_average_1min"]
    print(
        f"load average (1 min) before/after: {load['before']:.1f}/{load['after']:.1f} "
        f"on {os.cpu_count()} cores"
    )
    print(f"wrote {write_result(result, args.out, 'step_time')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
