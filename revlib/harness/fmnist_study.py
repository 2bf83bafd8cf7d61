"""Chapter 7's one-epoch Fashion-MNIST study: the papers' networks, several seeds, small data.

Superseded by :mod:`revlib.harness.fmnist_grid` (16 epochs, chosen by a pilot); chapter 7
shows this study until that grid is complete.

    python -m revlib.harness.fmnist_study grid --out revlib/harness/results/fmnist_study.json

runs the whole grid in one process on one CPU thread, caching each finished
run as its own JSON under ``--cache`` (a stopped grid continues where it
stopped), and writes the results file that chapter 7 reads and compares its
own re-runs with.

**Data.** Fashion-MNIST (Xiao et al. 2017) through
:func:`revlib.harness.data.load_fashion_mnist`; :func:`fmnist_splits` holds out
500 images per class of the 60,000 training images as a class-stratified
validation split (55,000 / 5,000), and the 10,000 test images are evaluated
once per run, on the final weights. Nothing is selected on the test split;
the schedule is fixed, so nothing is selected at all.

**Networks** (:data:`NETWORKS`): ResNet-32 and RevNet-38 (Gomez et al. 2017),
Hamiltonian-74, Midpoint-26 and Leapfrog-26 (Chang et al. 2018) at the papers'
depths, with one input channel and every width multiplied by one factor
(``Grid.width``; :func:`scaled`), so equal parameter budgets stay equal.

**Recipe** (:class:`Schedule`): the papers' SGD (momentum 0.9, learning rate
0.1, weight decay 2e-4, batch 128, Chang et al.'s weight smoothness 2e-4 for
the ODE networks, with :func:`revlib.core.smoothness.weight_smoothness` as the
paper writes it), shortened: a fixed number of updates with the learning rate
divided by 10 after 50 % and 75 % of them, as the papers' milestones sit in
their schedules. BatchNorm momentum 0.1 (PyTorch's default), as the official
0.01 is too slow for runs this short.

**Backward modes.** A ResNet trains with autograd. Each reversible network
trains seed 0 in ``mode="reversible"`` and the other seeds in
``mode="autograd"``, which computes the same gradients (chapter 4); every run
records its mode.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.modes import validate_mode
from ..models.common import count_parameters
from . import data, grid, networks, train
from .data import FmnistSplits, fmnist_splits

__all__ = [
    "NETWORKS",
    "REVERSIBLE",
    "ODE_NETWORKS",
    "Schedule",
    "Grid",
    "GRID",
    "FmnistSplits",
    "fmnist_splits",
    "scaled",
    "build",
    "train_run",
    "jobs",
    "run_grid",
    "collect",
    "load_results",
    "PACKAGED_RESULTS",
    "select",
    "compare_to",
    "detectable_difference",
    "main",
]

NETWORKS: tuple[str, ...] = (
    "ResNet-32",
    "RevNet-38",
    "Hamiltonian-74",
    "Midpoint-26",
    "Leapfrog-26",
)
"""The networks of Gomez et al.'s and Chang et al.'s CIFAR tables, by the papers' names."""

REVERSIBLE: tuple[str, ...] = NETWORKS[1:]
"""The networks that have a ``mode="reversible"``."""

ODE_NETWORKS: tuple[str, ...] = ("Hamiltonian-74", "Midpoint-26", "Leapfrog-26")
"""The networks trained with Chang et al.'s weight smoothness."""

scaled = networks.scaled


def build(name: str, width: float = 1.0, mode: str = "autograd", in_channels: int = 1) -> nn.Module:
    """Network ``name`` of :data:`NETWORKS`, widths times ``width``, for 10 classes (as
    :func:`revlib.harness.networks.build` makes it; a ResNet has only mode ``"autograd"``)."""
    valid = validate_mode("fmnist_study.build", mode)
    return networks.build(name, in_channels=in_channels, width=width, mode=valid)


# -------------------------------------------------------------------- training


@dataclass(frozen=True)
class Schedule:
    """The papers' SGD recipe, shortened to a fixed number of updates with two tenfold drops."""

    lr: float = 0.1
    momentum: float = 0.9
    batch_size: int = 128
    weight_decay: float = 2e-4
    smoothness: float = 2e-4
    bn_momentum: float = 0.1
    drops_at: tuple[float, float] = (0.5, 0.75)
    log_every: int = 10

    def lr_at(self, step: int, updates: int) -> float:
        """Learning rate of update ``step`` (0-based) of a run of ``updates`` updates."""
        return self.lr * 0.1 ** sum(step >= int(f * updates) for f in self.drops_at)


def _evaluate(model: nn.Module, split: data.ImageData, device: str) -> dict:
    return train.evaluate(
        model, data.TensorLoader(split, 500, shuffle=False, augment=False, device=device), device
    )


def train_run(
    name: str,
    seed: int,
    splits: FmnistSplits,
    *,
    updates: int,
    width: float,
    fraction: float = 1.0,
    mode: str = "autograd",
    schedule: Schedule = Schedule(),
    validate: bool = True,
    test_images: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``name`` from ``seed`` for ``updates`` updates; evaluate the final weights.

    ``seed`` seeds the initialisation, the batches and their augmentation, and
    (``fraction < 1``) the class-balanced subset of the training split
    (:func:`revlib.harness.data.balanced_subset`). Returns the run's settings,
    ``params``, ``train_images``, ``loss`` (mean training loss of every
    ``schedule.log_every`` updates), ``val_acc`` (if ``validate``),
    ``test_acc``, ``test_loss``, ``test_images`` and ``seconds``. Accuracies
    are fractions. ``test_images`` (if given) evaluates on a fixed,
    class-balanced part of the test split, the same for every run (subset seed 0).
    """
    t0 = time.perf_counter()
    train_set = splits.train
    if fraction < 1:
        train_set = train_set.subset(data.balanced_subset(train_set, fraction, seed=seed))
    train.seed_everything(seed)
    model = train.set_bn_momentum(build(name, width, mode), schedule.bn_momentum).to(device)
    opt = torch.optim.SGD(
        train.parameter_groups(model, schedule.weight_decay),
        lr=schedule.lr,
        momentum=schedule.momentum,
    )
    extra: Callable[[nn.Module], torch.Tensor] | None = (
        train.smoothness_hook(schedule.smoothness)
        if name in ODE_NETWORKS and schedule.smoothness > 0
        else None
    )
    loader = data.TensorLoader(train_set, schedule.batch_size, seed=seed, device=device)
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(())
    losses: list[float] = []
    window: list[float] = []
    model.train()
    for step in range(updates):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        for g in opt.param_groups:
            g["lr"] = schedule.lr_at(step, updates)
        loss = F.cross_entropy(model(x).float(), y)
        total = loss + extra(model) if extra is not None else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        window.append(loss.item())
        if len(window) == schedule.log_every or step == updates - 1:
            losses.append(sum(window) / len(window))
            window = []
    result: dict[str, Any] = {
        "model": name,
        "seed": seed,
        "fraction": fraction,
        "mode": mode,
        "width": width,
        "updates": updates,
        "params": count_parameters(model),
        "train_images": len(train_set),
        "loss": losses,
    }
    if validate:
        result["val_acc"] = _evaluate(model, splits.val, device)["acc"]
    test = splits.test
    if test_images is not None and test_images < len(test):
        test = test.subset(data.balanced_subset(test, test_images / len(test), seed=0))
    r = _evaluate(model, test, device)
    result.update(
        test_acc=r["acc"],
        test_loss=r["loss"],
        test_images=len(test),
        seconds=time.perf_counter() - t0,
        device=device,
    )
    return result


# ------------------------------------------------------------------------ grid


@dataclass(frozen=True)
class Grid:
    """Every run behind chapter 7's Fashion-MNIST tables and figure.

    ``updates``: per full-training-set run (430 = one epoch of the 55,000
    images at batch 128). ``small_updates``: per run on a subset (the same for
    every subset size), tested on ``small_test_images`` class-balanced test
    images (the same ones for every run). ``small_seeds_more`` are added at
    the sizes up to ``more_seeds_below``.
    """

    width: float = 0.25
    updates: int = 430
    seeds: tuple[int, ...] = (0, 1, 2)
    reversible_seeds: tuple[int, ...] = (0,)
    small_models: tuple[str, ...] = ("ResNet-32", "Hamiltonian-74")
    fractions: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1)
    small_updates: int = 100
    small_test_images: int = 2000
    small_seeds: tuple[int, ...] = (0, 1, 2)
    small_seeds_more: tuple[int, ...] = (3, 4)
    more_seeds_below: float = 0.02
    device: str = "cpu"


GRID = Grid()


def jobs(grid: Grid = GRID) -> list[tuple[str, float, int, str]]:
    """The grid's runs as ``(model, fraction, seed, mode)``, essential ones first.

    Order: the full-set runs seed by seed (every network's seed 0, then seed
    1, ...); then the subsets: the first two seeds at every size, then the
    other seeds at the smallest sizes (up to ``more_seeds_below``), then the
    other seeds at the larger sizes. A grid stopped early still has whole
    seeds of the full set and a spread at every size.
    """
    out = []
    for s in grid.seeds:
        for m in NETWORKS:
            out.append(
                (
                    m,
                    1.0,
                    s,
                    "reversible" if m in REVERSIBLE and s in grid.reversible_seeds else "autograd",
                )
            )
    small = [
        (f, s)
        for s in grid.small_seeds + grid.small_seeds_more
        for f in grid.fractions
        if s in grid.small_seeds or f <= grid.more_seeds_below
    ]
    first = set(grid.small_seeds[:2])
    small.sort(key=lambda fs: (fs[1] not in first, fs[0] > grid.more_seeds_below, fs[1], fs[0]))
    for f, s in small:
        out += [(m, f, s, "autograd") for m in grid.small_models]
    return out


def _path(cache: Path, job: tuple, grid: Grid) -> Path:
    model, fraction, seed, mode = job
    updates = grid.updates if fraction == 1 else grid.small_updates
    return (
        cache
        / f"w{grid.width:g}_{grid.device}"
        / f"{model}_f{fraction:g}_u{updates}_seed{seed}_{mode}.json"
    )


def run_grid(
    grid: Grid = GRID,
    cache: str | Path = "runs/fmnist",
    log: Callable[[str], None] = print,
    after_each: Callable[[], None] | None = None,
    splits: FmnistSplits | None = None,
) -> dict[str, Any]:
    """Run every job of ``grid`` not yet cached under ``cache``, in :func:`jobs` order.

    ``splits`` defaults to :func:`fmnist_splits`; ``after_each`` is called after every finished run.
    """
    cache = Path(cache)
    splits = splits if splits is not None else fmnist_splits()
    todo = jobs(grid)
    t0 = time.perf_counter()
    for i, job in enumerate(todo, 1):
        path = _path(cache, job, grid)
        if not path.exists():
            model, fraction, seed, mode = job
            full = fraction == 1
            r = train_run(
                model,
                seed,
                splits,
                updates=grid.updates if full else grid.small_updates,
                width=grid.width,
                fraction=fraction,
                mode=mode,
                validate=full,
                test_images=None if full else grid.small_test_images,
                device=grid.device,
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            train.atomic_write_text(json.dumps(r) + "\n", path)
            if after_each is not None:
                after_each()
        log(f"[{i}/{len(todo)}] {time.perf_counter() - t0:7.0f} s  {path}")
    return collect(grid, cache)


def collect(grid: Grid = GRID, cache: str | Path = "runs/fmnist") -> dict[str, Any]:
    """The results file's content from the cached runs of ``grid``; runs not done in ``missing``."""
    from ..core.device import hardware

    cache = Path(cache)
    runs, missing = [], []
    for job in jobs(grid):
        path = _path(cache, job, grid)
        if path.exists():
            runs.append(json.loads(path.read_text()))
        else:
            missing.append(list(job))
    return {
        "format": "revlib.harness.fmnist_study/1",
        "command": "python -m revlib.harness.fmnist_study grid",
        "grid": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(grid).items()},
        "schedule": asdict(Schedule()),
        "split": {"train": 55000, "val": 5000, "test": 10000},
        "hardware": hardware(torch.device(grid.device)),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "wall_seconds": sum(r["seconds"] for r in runs),
        "runs": runs,
        "missing": missing,
    }


PACKAGED_RESULTS = "results/fmnist_study.json"
"""The committed results file, shipped inside ``revlib.harness`` (pyproject's package data)."""


def load_results(path: str | Path | None = None) -> dict[str, Any]:
    """A results file of :func:`main`: ``path``, or the one shipped with revlib (``None``)."""
    command = f"python -m revlib.harness.fmnist_study grid --out {path or PACKAGED_RESULTS}"
    return grid.load(path, "revlib.harness.fmnist_study/1", command, packaged=PACKAGED_RESULTS)


def select(
    results: dict[str, Any], model: str, fraction: float = 1.0, key: str = "test_acc"
) -> dict[int, float]:
    """Seed -> ``key`` (in percent if an accuracy) of ``model``'s runs at ``fraction``."""
    scale = 100.0 if key.endswith("_acc") else 1.0
    return {
        r["seed"]: scale * r[key]
        for r in sorted(results["runs"], key=lambda r: r["seed"])
        if r["model"] == model and r["fraction"] == fraction
    }


def detectable_difference(se: float, z_alpha: float = 1.96, z_power: float = 0.84) -> float:
    """The smallest true difference a two-sided test at alpha 0.05 finds with 80 % power.

    ``(1.96 + 0.84) * se`` (the normal approximation).
    """
    return (z_alpha + z_power) * se


def compare_to(
    results: dict[str, Any], model: str, reference: str = "ResNet-32", fraction: float = 1.0
) -> dict[str, float]:
    """``model`` against ``reference``: mean, std, n, difference of means, its standard error,
    detectable difference."""
    a, b = (
        list(select(results, model, fraction).values()),
        list(select(results, reference, fraction).values()),
    )
    diff = statistics.mean(a) - statistics.mean(b)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return {
        "mean": statistics.mean(a),
        "std": statistics.stdev(a),
        "n": len(a),
        "diff": diff,
        "se": se,
        "mdd": detectable_difference(se),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m revlib.harness.fmnist_study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grid", help="run the grid (resumable) and write the results file")
    g.add_argument("--out", default="revlib/harness/results/fmnist_study.json")
    g.add_argument(
        "--cache", default="runs/fmnist", help="one JSON per finished run; a rerun skips them"
    )
    g.add_argument(
        "--width",
        type=float,
        default=GRID.width,
        help="factor on every network's widths (1: the papers')",
    )
    g.add_argument(
        "--updates", type=int, default=GRID.updates, help="updates per full-training-set run"
    )
    g.add_argument(
        "--small-updates", type=int, default=GRID.small_updates, help="updates per subset run"
    )
    g.add_argument("--device", default="cpu")
    g.add_argument(
        "--collect-only",
        action="store_true",
        help="write the results file from the cache, run nothing",
    )
    g.add_argument(
        "--write-every-run", action="store_true", help="rewrite --out after every finished run"
    )
    g.add_argument(
        "--quick",
        action="store_true",
        help="a code-path check: one seed, one subset, and validation "
        "and test splits cut to 1,000 class-balanced images each; its numbers are no result",
    )
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.device == "cpu":
        torch.set_num_threads(1)
    grid = replace(
        GRID,
        width=args.width,
        updates=args.updates,
        small_updates=args.small_updates,
        device=args.device,
    )
    splits = None
    if args.quick:
        grid = replace(
            grid, seeds=(0,), small_seeds=(0,), small_seeds_more=(), fractions=grid.fractions[:1]
        )
        full = fmnist_splits()
        cut = lambda d: d.subset(data.balanced_subset(d, 1000 / len(d)))  # noqa: E731
        splits = FmnistSplits(full.train, cut(full.val), cut(full.test))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        train.atomic_write_text(json.dumps(collect(grid, args.cache), indent=0) + "\n", out)

    result = (
        collect(grid, args.cache)
        if args.collect_only
        else run_grid(
            grid, args.cache, after_each=write if args.write_every_run else None, splits=splits
        )
    )
    train.atomic_write_text(json.dumps(result, indent=0) + "\n", out)
    print(f"wrote {out}: {len(result['runs'])} runs, {len(result['missing'])} missing")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
