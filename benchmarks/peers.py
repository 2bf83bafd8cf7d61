"""revlib among its peers, measured side by side: one training step of the same coupling stack
in plain autograd, revlib, torch.utils.checkpoint, MemCNN, RevTorch, PyPI's revlib and FrEIA.

The model is benchmarks/step_time.py's: ``--depth`` additive coupling blocks on
``--width`` channels, F and G each BN-ReLU-conv3x3-BN-ReLU-conv3x3 on half the
channels, with the same initial weights in every library (revlib.harness.peers
builds each library's stack around copies of the same F and G; its docstring
lists the settings). One step is forward, backward of mean(y^2) and an SGD
update (momentum 0.9). The input requires grad in every variant: RevTorch and
PyPI's revlib give F and G no gradient otherwise (the correctness section shows
it), so all variants compute the input's gradient, as a block inside a network
does.

Three sections, in this order:

1. **Correctness** (``--checks``, default on): revlib.harness.peer_checks.check_all,
   every library against plain autograd in the cases of revlib.harness.peer_checks.CASES
   (float64, small tensors): pass, fail (what differs), error or n/a.
2. **Timing**, the one that the load watch covers (common.run_metadata to
   common.write_result, which refuses to write when other processes used the
   CPU): the variants interleaved, in a rotating order, after warm-up steps;
   the median of ``--repeats`` steps, each variant's ratio to autograd (of
   medians; the median of per-round ratios with a 95 % bootstrap interval; of
   the process's CPU time).
3. **Memory** per variant: the bytes saved for backward as saved-tensor hooks see
   them (revlib.core.memory.saved_tensor_bytes: what ``save_for_backward`` and
   torch's own operations save), and the bytes one forward leaves allocated
   (revlib.harness.peers.held_bytes: the CPU allocator's count, which also sees
   tensors a library keeps as attributes of its autograd node, as MemCNN and
   RevTorch do; the output is included).

    OMP_NUM_THREADS=1 python benchmarks/peers.py --threads 1   # the results file

Writes benchmarks/results/peers_<device>.json (``--out`` to change). A library
that is missing is left out, with the reason in the file.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch
from common import (
    add_run_options,
    add_stack_options,
    print_setting,
    run_metadata,
    stack_setting,
    time_interleaved,
    write_result,
)
from step_time import bootstrap_median, halves

import revlib
from revlib.core.memory import cuda_peak_bytes, saved_tensor_bytes
from revlib.harness import peer_checks, peers


def build_variants(
    args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """One model per available library, from the same initial F and G; and the reasons of the
    missing ones."""
    torch.manual_seed(args.seed)
    pairs = halves(args.depth, args.width)
    models, left_out = {}, {}
    for key in args.libraries:
        reason = peers.missing(key)
        if reason is not None:
            left_out[key] = reason
            continue
        own = [(copy.deepcopy(f), copy.deepcopy(g)) for f, g in pairs]
        models[key] = peers.build(key, own, (args.width, args.size, args.size)).to(device)
    return models, left_out


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device) if args.device else revlib.default_device()
    if args.threads:
        torch.set_num_threads(args.threads)
    checks = (
        {
            key: {case: str(v) for case, v in verdicts.items()}
            for key, verdicts in peer_checks.check_all(args.libraries[1:]).items()
        }
        if args.checks
        else {}
    )
    models, left_out = build_variants(args, device)
    names = list(models)
    if names[0] != "autograd":
        raise SystemExit("benchmarks/peers.py: the autograd reference must be the first library")
    torch.manual_seed(args.seed + 1)
    x = torch.randn(args.batch, args.width, args.size, args.size, device=device)
    optimizers = {
        n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for n, m in models.items()
    }

    def step(name: str) -> None:
        optimizers[name].zero_grad(set_to_none=True)
        # a fresh input (MemCNN frees its blocks' inputs), requiring grad (see the docstring)
        models[name](x.clone().requires_grad_()).square().mean().backward()
        optimizers[name].step()

    meta = run_metadata(device)  # starts the load watch: the timing below is what it covers
    times, cpu_times = time_interleaved(step, names, device, args.warmup, args.repeats)
    medians = {n: statistics.median(t) for n, t in times.items()}
    per_round = {
        n: [a / b for a, b in zip(times[n], times["autograd"], strict=True)] for n in names
    }
    cpu_medians = {n: statistics.median(t) for n, t in cpu_times.items()}

    saved = {n: saved_tensor_bytes(models[n], x.clone().requires_grad_()) for n in names}
    held = {n: peers.held_bytes(models[n], x.clone().requires_grad_()) for n in names}
    peak = (
        {n: cuda_peak_bytes(lambda n=n: step(n), device) for n in names}
        if device.type == "cuda"
        else None
    )
    return {
        "benchmark": "peers",
        "what": "one training step (forward, backward of mean(y^2), SGD update) of a stack of "
        "additive coupling blocks, F and G = BN-ReLU-conv3x3-BN-ReLU-conv3x3 on half the "
        "channels, in each library; the input requires grad",
        **meta,
        **stack_setting(args),
        "variants": names,
        "labels": {n: peers.PEERS[n].label for n in names},
        "settings": {n: peers.PEERS[n].settings for n in names},
        "versions": {
            n: peers.PEERS[n].version
            or (revlib.__version__ if n == "revlib" else torch.__version__)
            for n in names
        },
        "left_out": left_out,
        "median_seconds": medians,
        "ratio_to_autograd": {n: medians[n] / medians["autograd"] for n in names},
        "paired_ratio_to_autograd": {n: statistics.median(r) for n, r in per_round.items()},
        "paired_ratio_95_interval": {n: bootstrap_median(r) for n, r in per_round.items()},
        "median_cpu_seconds": cpu_medians,
        "cpu_time_ratio_to_autograd": {n: cpu_medians[n] / cpu_medians["autograd"] for n in names},
        "min_seconds": {n: min(t) for n, t in times.items()},
        "all_seconds": times,
        "saved_bytes_hooks": saved,
        "held_bytes_after_forward": held,
        "output_bytes": x.numel() * x.element_size(),
        "cuda_peak_bytes": peak,
        "checks": checks,
        "cases": {k: c.question for k, c in peer_checks.CASES.items()},
        "note": "medians of interleaved repeats (rotating order) after warm-up; compare ratios "
        "within one run. " + (args.note or ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_stack_options(parser, repeats=30)
    parser.add_argument(
        "--libraries",
        nargs="+",
        default=list(peers.LIBRARIES),
        choices=list(peers.LIBRARIES),
        help="the variants, autograd first (default: all)",
    )
    parser.add_argument(
        "--checks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the correctness section first (default: on)",
    )
    add_run_options(parser, "peers")
    args = parser.parse_args(argv)

    result = run(args)
    print_setting(result, args)
    for key, verdicts in result["checks"].items():
        print(f"{key}: " + "; ".join(f"{case} {v.split(':')[0]}" for case, v in verdicts.items()))
    for key, reason in result["left_out"].items():
        print(f"left out {key}: {reason}")
    print(
        f"{'variant':12s} {'median ms':>10s} {'ratio':>7s} {'paired (95 %)':>20s} "
        f"{'CPU ratio':>9s} {'hooks MiB':>10s} {'held MiB':>9s}"
    )
    for n in result["variants"]:
        low, high = result["paired_ratio_95_interval"][n]
        print(
            f"{n:12s} {1000 * result['median_seconds'][n]:10.1f} "
            f"{result['ratio_to_autograd'][n]:7.2f} "
            f"{result['paired_ratio_to_autograd'][n]:7.2f} ({low:.2f}-{high:.2f}) "
            f"{result['cpu_time_ratio_to_autograd'][n]:9.2f} "
            f"{result['saved_bytes_hooks'][n] / 2**20:10.2f} "
            f"{result['held_bytes_after_forward'][n] / 2**20:9.2f}"
        )
    print(f"wrote {write_result(result, args.out, 'peers')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
