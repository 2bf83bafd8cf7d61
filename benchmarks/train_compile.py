"""Does ``torch.compile`` shorten chapter 7's training runs on this CPU, and does it change them?

    OMP_NUM_THREADS=1 python benchmarks/train_compile.py --threads 1

One training step (forward, loss, backward, SGD update) of chapter 7's
networks at the grid's width on Fashion-MNIST-sized batches (128 x 1 x 28 x
28), eager against ``torch.compile(model)``, timed interleaved
(:func:`common.time_interleaved`). Then both train the same batches from the
same weights for ``--check-steps`` updates, and the largest difference of
their losses says whether compiling changed the run beyond float rounding.
Writes ``results/train_compile_cpu.json``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from common import (
    add_run_options,
    compile_from_scratch,
    run_metadata,
    time_interleaved,
    write_result,
)

from revlib.harness import fmnist_grid, networks, train


def make(name: str, compiled: bool, seed: int) -> tuple[torch.nn.Module, object, torch.optim.SGD]:
    train.seed_everything(seed)
    model = networks.build(
        name,
        in_channels=1,
        width=fmnist_grid.WIDTH,
        mode="autograd",
        **fmnist_grid.ode_options(name),
    )
    train.set_bn_momentum(model, 0.1)
    opt = torch.optim.SGD(train.parameter_groups(model, 2e-4), lr=0.1, momentum=0.9)
    return model, torch.compile(model) if compiled else model, opt


def step(forward, model, opt, x, y) -> float:
    loss = F.cross_entropy(forward(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_options(p, "train_compile")
    p.add_argument("--models", nargs="+", default=["ResNet-32", "Hamiltonian-74"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--check-steps", type=int, default=20)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    compile_from_scratch()
    g = torch.Generator().manual_seed(args.seed)
    batches = [
        (torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g))
    ]
    batches *= max(args.check_steps, 1)
    device = torch.device("cpu")
    result = {**run_metadata(device), "note": args.note, "models": {}}
    for name in args.models:
        variants = {v: make(name, v == "compiled", args.seed) for v in ("eager", "compiled")}
        x, y = batches[0]
        wall, cpu = time_interleaved(
            lambda v, vs=variants, x=x, y=y: step(vs[v][1], vs[v][0], vs[v][2], x, y),
            list(variants),
            device,
            args.warmup,
            args.repeats,
        )
        losses = {}
        for v in ("eager", "compiled"):
            model, forward, opt = make(name, v == "compiled", args.seed)
            losses[v] = [step(forward, model, opt, bx, by) for bx, by in batches]
        diff = max(abs(a - b) for a, b in zip(losses["eager"], losses["compiled"], strict=True))
        med = {v: statistics.median(wall[v]) for v in wall}
        result["models"][name] = {
            "median_s": med,
            "ratio_compiled_to_eager": med["compiled"] / med["eager"],
            "wall_s": wall,
            "cpu_s": cpu,
            "max_loss_difference": diff,
            "losses": losses,
        }
        print(
            f"{name}: eager {med['eager'] * 1e3:.0f} ms, compiled {med['compiled'] * 1e3:.0f} ms "
            f"(ratio {med['compiled'] / med['eager']:.2f}); largest loss difference over "
            f"{args.check_steps} steps {diff:.1e}"
        )
    print("wrote", write_result(result, args.out, "train_compile"))


if __name__ == "__main__":
    main()
