"""Chapter 7's Fashion-MNIST grid: the papers' five networks, a pilot for the length, baselines.

    OMP_NUM_THREADS=1 python -m revlib.harness.fmnist_grid pilot     # twice, side by side
    OMP_NUM_THREADS=1 python -m revlib.harness.fmnist_grid grid --compile    # twice
    python -m revlib.harness.fmnist_grid collect --out revlib/harness/results/fmnist_grid.json
    python -m revlib.harness.fmnist_grid grid --width 1 --device cuda --epochs 16 \
        --cache runs/fmnist_w1 --out runs/fmnist_w1.json   # the papers' widths, on a GPU

Each run is a :class:`Run` of the resumable grid (:mod:`revlib.harness.grid`):
one JSON per finished run under ``--cache``, a checkpoint after every epoch
(model, optimiser, schedule position, random state, place in the data order:
:class:`revlib.harness.train.Trainer`), so a stopped run resumes bit-identically
on the same machine and a stopped grid goes on where it stopped. Processes that
share the cache share its jobs (:func:`revlib.harness.grid.claim`).

**Data.** Fashion-MNIST (Xiao et al. 2017): :func:`revlib.harness.data.fmnist_splits`
holds out 500 training images per class for validation (55,000 / 5,000); every
choice is made on the validation split, and the 10,000 test images are
evaluated once per run, on the final weights.

**Recipe.** The papers' SGD (momentum 0.9, learning rate 0.1, weight decay
2e-4, batch 128; weight smoothness 2e-4 for Chang et al.'s networks) over
``epochs`` passes with the learning rate divided by 10 after 50 % and 75 % of
the updates. BatchNorm momentum 0.1 (PyTorch's default).

**The plan, fixed before the main runs** (:func:`main_jobs`):

1. *Pilot* (validation only): ResNet-32, seed 0, at :data:`WIDTH`, for each
   length of :data:`PILOT_EPOCHS`. :func:`plateau_epochs` applies the rule: the
   schedule length E is the shortest whose validation accuracy is within
   :data:`PLATEAU_TOLERANCE` of the schedule twice as long. No length up to 64
   met it (each doubling from 16 epochs still added 0.5 to 0.7 points), and the
   next pilot alone would take three core-hours, the grid at E = 64 about fifty.
   So, decided after the pilot and before any main run (:func:`grid_epochs`): when
   no pilot length meets the rule, E is :data:`BUDGET_EPOCHS`, the longest pilot
   length whose grid was estimated to fit about fifteen core-hours at this width
   (it took 32), and the chapter reports the gap to the longest pilot.
2. *Main table*: the five networks at E epochs, :data:`SEEDS` each
   (:data:`PAIR_SEEDS` for ResNet-32 and RevNet-38).
3. *Step-size arm*: Hamiltonian-74 with its blocks' learning rate times 1/h.
4. *Small data*: ResNet-32 and Hamiltonian-74 on class-balanced subsets, one
   subset per seed shared by both networks (paired), :func:`small_updates` each;
   a length check (``study="small_length"``, validation only) trains seed 0 of
   both at the smallest and largest subset with twice the updates.
5. *Modes*: :mod:`revlib.harness.mode_compare` for every reversible network.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.device import hardware
from ..core.modes import validate_mode
from . import data, grid, mode_compare, networks, train
from .baselines import BASELINES, fit_baseline

__all__ = [
    "FORMAT",
    "WIDTH",
    "PILOT_EPOCHS",
    "PLATEAU_TOLERANCE",
    "NETWORKS",
    "SEEDS",
    "PAIR_SEEDS",
    "FRACTIONS",
    "SMALL_SEEDS",
    "Run",
    "ode_options",
    "build_network",
    "block_lr_scale",
    "recipe_for",
    "small_updates",
    "perform",
    "pilot_jobs",
    "plateau_epochs",
    "main_jobs",
    "code_path_jobs",
    "load_results",
    "main",
]

FORMAT = "revlib.harness.fmnist_grid/1"
WIDTH = 0.5
"""Every network's widths times this (Chang et al.'s and Gomez et al.'s CIFAR widths halved)."""
PILOT_EPOCHS: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
PLATEAU_TOLERANCE = 0.003
"""0.3 points of validation accuracy (the rule of :func:`plateau_epochs`)."""
BUDGET_EPOCHS = 16
"""E when no pilot length meets the rule (the plan above: :func:`grid_epochs`)."""
NETWORKS: tuple[str, ...] = tuple(networks.PAPER_NAMES)
SEEDS: tuple[int, ...] = (0, 1, 2)
PAIR_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
FRACTIONS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.2)
SMALL_SEEDS: tuple[int, ...] = (0, 1, 2, 3)
SMALL_NETWORKS: tuple[str, ...] = ("ResNet-32", "Hamiltonian-74")
SMALL_LENGTH_FRACTIONS: tuple[float, ...] = (FRACTIONS[0], FRACTIONS[-1])
MIN_SMALL_UPDATES = 1000
MODE_UPDATES = 300
COSINE_AT: tuple[int, ...] = (0, 100, 200, 299)
BATCH = 128
TRAIN_IMAGES = 55_000


@dataclass(frozen=True)
class Run(grid.Job):
    """One training run of the grid; the fields name it (and its cache file)."""

    study: str
    model: str
    seed: int
    epochs: int
    width: float = WIDTH
    fraction: float = 1.0
    mode: str = "autograd"
    block_lr: float = 1.0
    test: bool = True


def ode_options(name: str) -> dict[str, Any]:
    """Block options: Midpoint-26 with tanh, as chapter 6 advises (with ReLU its antisymmetric
    layer reconstructs poorly); the others as in the papers."""
    return {"activation": "tanh"} if name == "Midpoint-26" else {}


def block_lr_scale(model: nn.Module, factor: float) -> train.LrScale:
    """``lr_scale`` for the :class:`~revlib.harness.train.Trainer`: ``factor`` on the ODE blocks."""
    from ..core.ode import HamiltonianBlock, LeapfrogBlock, MidpointBlock

    inside = {
        id(p)
        for m in model.modules()
        if isinstance(m, HamiltonianBlock | MidpointBlock | LeapfrogBlock)
        for p in m.parameters()
    }
    return lambda name, p: factor if id(p) in inside else 1.0


def steps_per_epoch(images: int) -> int:
    return math.ceil(images / BATCH)


def small_updates(fraction: float, epochs: int) -> int:
    """Updates of a run on a subset: ``epochs`` passes, at least :data:`MIN_SMALL_UPDATES`."""
    return max(epochs * steps_per_epoch(round(fraction * TRAIN_IMAGES)), MIN_SMALL_UPDATES)


def recipe_for(run: Run, images: int, max_updates: int | None = None) -> train.Recipe:
    """The papers' recipe over the run's updates, drops after 50 % and 75 % of them (at most
    ``max_updates`` updates: a code-path check)."""
    updates = (
        run.epochs * steps_per_epoch(images)
        if run.fraction == 1
        else small_updates(run.fraction, run.epochs) * (2 if run.study == "small_length" else 1)
    )
    updates = updates if max_updates is None else min(updates, max_updates)
    return train.Recipe(
        name=f"fmnist {updates} updates",
        iterations=updates,
        batch_size=BATCH,
        milestones=(updates // 2, (3 * updates) // 4),
        smoothness=2e-4 if networks.is_ode(run.model) else 0.0,
        source="Gomez et al. 2017 / Chang et al. 2018 recipe, shortened",
    )


def _subset(run: Run, splits: data.FmnistSplits) -> data.ImageData:
    """The run's training images. A subset depends on the seed only: a seed's networks share it."""
    if run.fraction == 1:
        return splits.train
    return splits.train.subset(data.balanced_subset(splits.train, run.fraction, seed=run.seed))


def build_network(name: str, width: float = WIDTH, mode: str = "autograd") -> nn.Module:
    """The grid's network ``name`` for one-channel images: every width times ``width``,
    :func:`ode_options`, BatchNorm momentum 0.1."""
    model = networks.build(
        name,
        in_channels=1,
        width=width,
        mode=validate_mode("fmnist_grid", mode),
        **ode_options(name),
    )
    return train.set_bn_momentum(model, 0.1)


def perform(
    run: Run,
    checkpoint: Path | None,
    splits: data.FmnistSplits | None = None,
    *,
    stop_at: int | None = None,
    compile: bool = False,
    device: str = "cpu",
    max_updates: int | None = None,
) -> dict[str, Any] | None:
    """Do ``run``: a training run (resumed from ``checkpoint`` if it exists), a baseline
    (``study="baseline"``) or a mode comparison (``study="modes"``).

    A training run returns ``params``, ``train_images``, ``updates``,
    ``history`` (one row per epoch: training loss and accuracy, and the
    validation accuracy where it was measured), ``val_acc``, ``test_acc`` and
    ``test_loss`` (if ``run.test``) of the final weights, and ``seconds``
    (training and evaluation, summed over resumes). ``stop_at`` stops a training
    run after that many updates, its checkpoint saved, and returns ``None``.
    ``compile`` runs the forward of a ``mode="autograd"`` run through ``torch.compile``
    (0.69x the eager step time of ResNet-32 and Hamiltonian-74 on one CPU thread,
    ``benchmarks/results/train_compile_cpu.json``; the runs differ by float rounding,
    as on another CPU); the result records it. ``device`` trains there (the full-width
    run on a GPU); ``max_updates`` caps every training run and mode comparison (a
    code-path check, whose numbers are no result). Every result records where it ran
    (``hardware``; on a CPU ``cpu_capability``; runs made before 2026-12-06 lack both).
    """
    splits = splits if splits is not None else data.fmnist_splits()
    where = {"hardware": hardware(torch.device(device))["name"]}  # the CPU's kernels, too:
    where |= {"cpu_capability": torch.backends.cpu.get_cpu_capability()} if device == "cpu" else {}
    if run.study == "baseline":
        fit = fit_baseline(run.model, _subset(run, splits), splits.val, splits.test, run.seed)
        return {**fit, **where}
    if run.study == "modes":
        return {**_perform_modes(run, splits, device, max_updates), **where}
    train_set = _subset(run, splits)
    recipe = recipe_for(run, len(train_set), max_updates)
    train.seed_everything(run.seed)
    model = build_network(run.model, run.width, run.mode)
    epochs_total = math.ceil(recipe.iterations / steps_per_epoch(len(train_set)))
    trainer = train.Trainer(
        model,
        recipe,
        device=device,
        progress=False,
        checkpoint_path=checkpoint,
        eval_every=max(1, epochs_total // 16),
        lr_scale=block_lr_scale(model, run.block_lr) if run.block_lr != 1 else None,
        compile=compile and run.mode == "autograd",
    )
    if checkpoint is not None:
        trainer.resume_if_exists()
    loader = data.TensorLoader(train_set, BATCH, seed=run.seed)
    val_loader = data.TensorLoader(splits.val, 500, shuffle=False, augment=False)
    history = trainer.fit(loader, val_loader, stop_at=stop_at)
    if not trainer.done:
        return None
    rows = [
        {("val_" + k[5:] if k.startswith("test_") else k): v for k, v in row.items()}
        for row in history
    ]
    result: dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()),
        "train_images": len(train_set),
        "updates": recipe.iterations,
        "history": rows,
        "val_acc": rows[-1]["val_acc"],
        "compiled": trainer.compiled,
        **where,
    }
    t0 = time.perf_counter()
    if run.test:
        test = trainer.evaluate(data.TensorLoader(splits.test, 500, shuffle=False, augment=False))
        result.update(test_acc=test["acc"], test_loss=test["loss"])
    result["seconds"] = trainer.elapsed + time.perf_counter() - t0
    return result


def _perform_modes(
    run: Run, splits: data.FmnistSplits, device: str, max_updates: int | None
) -> dict[str, Any]:
    """Both modes from the run's seed; capped at ``max_updates``, the first updates of the
    uncapped comparison (the same learning rates: chapter 7 re-runs a prefix)."""
    updates = MODE_UPDATES if max_updates is None else min(MODE_UPDATES, max_updates)
    recipe = train.Recipe(
        name=f"fmnist {updates} of {MODE_UPDATES} updates",
        iterations=updates,
        batch_size=BATCH,
        milestones=(MODE_UPDATES // 2, (3 * MODE_UPDATES) // 4),
    )
    extra = train.smoothness_hook(2e-4) if networks.is_ode(run.model) else None
    return mode_compare.compare_modes(
        lambda mode: build_network(run.model, run.width, mode),
        lambda: data.TensorLoader(splits.train, BATCH, seed=run.seed),
        recipe,
        seed=run.seed,
        cosine_at=[u for u in COSINE_AT if u < updates],
        extra_loss=extra,
        device=device,
    )


# ------------------------------------------------------------------------ jobs


def pilot_jobs(width: float = WIDTH) -> list[Run]:
    """ResNet-32, seed 0, validation only, one run per schedule length."""
    order = (16, 8, 2, 4, 32, 64)  # two shards: 16 + 2 + 32 and 8 + 4 + 64 epochs
    return [Run("pilot", "ResNet-32", 0, e, width, test=False) for e in order if e in PILOT_EPOCHS]


def plateau_epochs(results: dict[str, Any] | Sequence[dict[str, Any]]) -> int | None:
    """The rule: the shortest pilot length E whose validation accuracy is within
    :data:`PLATEAU_TOLERANCE` of the length 2E; ``None`` while a shorter pair is unfinished, or
    if no pair meets it."""
    acc = {r["epochs"]: r["val_acc"] for r in grid.select(results, study="pilot")}
    for e in sorted(PILOT_EPOCHS):
        if 2 * e not in PILOT_EPOCHS:
            break
        if e not in acc or 2 * e not in acc:
            return None
        if round(abs(acc[2 * e] - acc[e]), 9) <= PLATEAU_TOLERANCE:
            return e
    return None


def grid_epochs(results: dict[str, Any] | Sequence[dict[str, Any]]) -> int | None:
    """The grid's E: :func:`plateau_epochs` if a pilot length meets the rule; else, once every
    pilot length has run, :data:`BUDGET_EPOCHS`; ``None`` while the pilot is unfinished."""
    chosen = plateau_epochs(results)
    if chosen is not None:
        return chosen
    done = {r["epochs"] for r in grid.select(results, study="pilot")}
    return BUDGET_EPOCHS if done >= set(PILOT_EPOCHS) else None


def independent_jobs(width: float = WIDTH) -> list[Run]:
    """The runs that do not depend on the pilot's E: the mode comparisons and the baselines
    (on the full training split and on each seed's subsets)."""
    jobs = [
        Run("modes", m, 0, 0, width, mode="both") for m in NETWORKS if networks.is_reversible(m)
    ]
    jobs += [Run("baseline", b, 0, 0, width) for b in BASELINES]
    for seed in SMALL_SEEDS:
        jobs += [Run("baseline", BASELINES[0], seed, 0, width, fraction=f) for f in FRACTIONS]
    return jobs


def code_path_jobs(jobs: Sequence[Run]) -> list[Run]:
    """One job of each kind among ``jobs`` (a study with its mode and learning-rate scale; a
    subset's baseline; both networks of one small-data pair): what a code-path check runs."""
    first: dict[tuple[Any, ...], Run] = {}
    for j in jobs:
        if j.study == "baseline" and j.fraction == 1:
            continue  # the full-split fits take minutes; a subset's takes the same path
        kind = (j.study, j.model) if j.study.startswith("small") else (j.study, j.mode, j.block_lr)
        first.setdefault(kind, j)
    return list(first.values())


def main_jobs(epochs: int, width: float = WIDTH) -> list[Run]:
    """Every run after the pilot at ``epochs``, essential runs first: the main table and the
    step-size arm seed by seed, the mode comparisons, the baselines, the small-data runs and
    their length check."""
    jobs = []
    for seed in PAIR_SEEDS:
        for m in NETWORKS:
            if seed in SEEDS or m in ("ResNet-32", "RevNet-38"):
                # seed 0 of every reversible network trains in mode "reversible"
                mode = "reversible" if seed == 0 and networks.is_reversible(m) else "autograd"
                jobs.append(Run("main", m, seed, epochs, width, mode=mode))
        if seed in SEEDS:
            jobs.append(Run("stepsize", "Hamiltonian-74", seed, epochs, width, block_lr=10.0))
    jobs += independent_jobs(width)
    for seed in SMALL_SEEDS:
        for f in FRACTIONS:
            jobs += [Run("small", m, seed, epochs, width, fraction=f) for m in SMALL_NETWORKS]
    jobs += [
        Run("small_length", m, 0, epochs, width, fraction=f, test=False)
        for f in SMALL_LENGTH_FRACTIONS
        for m in SMALL_NETWORKS
    ]
    return jobs


# ------------------------------------------------------------------------- CLI


QUICK_UPDATES = 2
"""Updates of every run under ``--quick`` (a code-path check: its numbers are no result)."""
QUICK_IMAGES = 1000
"""Validation and test images under ``--quick`` (class-balanced)."""


COMMAND = "python -m revlib.harness.fmnist_grid collect"
"""What makes the results file (from the runs' cache; see the module's docstring)."""


def load_results(path: str | Path | None = None) -> dict[str, Any]:
    """The grid's results file: ``path``, or the one shipped with revlib (``None``, what chapter 7
    reads)."""
    return grid.load(path, FORMAT, COMMAND, packaged="results/fmnist_grid.json")


def quick_splits() -> data.FmnistSplits:
    """The splits of ``--quick``: validation and test cut to :data:`QUICK_IMAGES` each."""
    full = data.fmnist_splits()

    def cut(d: data.ImageData) -> data.ImageData:
        return d.subset(data.balanced_subset(d, QUICK_IMAGES / len(d)))

    return data.FmnistSplits(full.train, cut(full.val), cut(full.test))


def _meta(command: str, width: float, device: str, quick: bool) -> dict[str, Any]:
    return {
        "command": command,
        "width": width,
        "device": device,
        "quick": quick,
        "pilot_epochs": list(PILOT_EPOCHS),
        "plateau_tolerance": PLATEAU_TOLERANCE,
        "split": {"train": TRAIN_IMAGES, "val": 5000, "test": 10000},
        "hardware": hardware(torch.device(device)),
        "torch": torch.__version__,
        "threads_per_run": 1 if device == "cpu" else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m revlib.harness.fmnist_grid",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=("pilot", "grid", "collect"))
    p.add_argument("--cache", default="runs/fmnist_grid", help="one JSON per finished run")
    p.add_argument(
        "--shard", default="0/1", help="i/n: every n-th job from the i-th (for separate machines)"
    )
    p.add_argument("--epochs", type=int, help="the grid's E (default: the pilot's rule)")
    p.add_argument("--out", default="revlib/harness/results/fmnist_grid.json")
    p.add_argument("--compile", action="store_true", help="torch.compile autograd-mode runs")
    p.add_argument("--width", type=float, default=WIDTH, help="factor on every width (1: papers')")
    p.add_argument("--device", default="cpu", help="where to train (a GPU: cuda)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a code-path check: one job of each kind, {QUICK_UPDATES} updates each, "
        f"validation and test cut to {QUICK_IMAGES} images; its numbers are no result",
    )
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.device == "cpu":
        torch.set_num_threads(1)
    width, out = args.width, Path(args.out)
    if out.exists():  # the runs committed so far need not run again
        shipped = load_results(out)
        grid.restore(
            pilot_jobs(width)
            + (
                main_jobs(shipped["epochs"], width)
                if shipped.get("epochs")
                else independent_jobs(width)
            ),
            shipped,
            args.cache,
        )
    pilot = grid.collect(pilot_jobs(width), args.cache, FORMAT)
    epochs = args.epochs or grid_epochs(pilot)
    do = functools.partial(
        perform,
        splits=quick_splits() if args.quick and args.command != "collect" else None,
        compile=args.compile,
        device=args.device,
        max_updates=QUICK_UPDATES if args.quick else None,
    )
    if args.command == "pilot":
        i, n = grid.parse_shard(args.shard)
        grid.run(grid.shard(pilot_jobs(width), i, n), args.cache, do)
        return 0
    # before the pilot has chosen E, only the runs that do not depend on it
    jobs = main_jobs(epochs, width) if epochs is not None else independent_jobs(width)
    if args.quick:
        jobs = code_path_jobs(jobs)
    if args.command == "grid":
        i, n = grid.parse_shard(args.shard)
        grid.run(grid.shard(jobs, i, n), args.cache, do)
        return 0
    result = grid.collect(
        ([] if args.quick else pilot_jobs(width)) + jobs,
        args.cache,
        FORMAT,
        **_meta("python -m revlib.harness.fmnist_grid", width, args.device, args.quick),
        epochs=epochs,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    train.atomic_write_text(json.dumps(result, indent=0) + "\n", out)
    print(f"wrote {out}: {len(result['runs'])} runs, {len(result['missing'])} missing")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
