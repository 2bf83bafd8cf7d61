"""Run one row of the accuracy tables and write a results JSON.

    # the paper recipe (80k iterations)
    python -m revlib.harness.experiments --model revnet38 --dataset cifar10
    # Chang et al.'s recipe (+ smoothness)
    python -m revlib.harness.experiments --model hamiltonian74 --dataset cifar100
    # small-data experiment
    python -m revlib.harness.experiments --model resnet32 --dataset cifar10 --fraction 0.05
    # CPU smoke run, offline
    python -m revlib.harness.experiments --model revnet38 --dataset digits --fast

The recipe is ``revnet`` for ResNets and RevNets and ``chang`` (the same plus
weight smoothness 2e-4) for the Hamiltonian, Midpoint and Leapfrog networks,
unless ``--recipe`` says otherwise; ``--iterations`` scales its schedule to a
shorter run, and ``--fast`` is a 60-iteration version of it for smoke tests (the
test set is then capped at 2,000 class-balanced images, and BatchNorm's momentum
is 0.1 instead of the official 0.01, whose running statistics would not settle
in so few steps).

A run keeps a checkpoint next to its results file (``--checkpoint``) and
continues from it when started again with the same arguments, so a Colab
session that was cut off loses at most one epoch.

The results JSON holds the model, the data set (and the fraction of its
training set), the recipe, the seed, the final test accuracy, the wall time and
the time per epoch, the hardware (GPU name or CPU model), the precision
options, the torch/torchvision/revlib versions, the command line and the
per-epoch history.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import __version__
from ..core.device import default_device, hardware
from ..models.common import count_parameters
from . import data, networks, train
from .networks import MODEL_NAMES, UnknownModelError

__all__ = [
    "run",
    "main",
    "hardware",
    "build_model",
    "UnknownModelError",
    "default_recipe",
    "FAST_ITERATIONS",
    "MODEL_NAMES",
]

FAST_ITERATIONS = 60
FAST_TEST_IMAGES = 2000


def default_recipe(model: str) -> str:
    """``"chang"`` for the ODE networks (weight smoothness), ``"revnet"`` otherwise."""
    return "chang" if networks.is_ode(model) else "revnet"


def build_model(name: str, num_classes: int, in_channels: int) -> torch.nn.Module:
    """A model of :mod:`revlib.models` by name (:func:`revlib.harness.networks.build`).

    Raises :class:`UnknownModelError` (a ``ValueError``) naming the models there are.
    """
    return networks.build(name, num_classes=num_classes, in_channels=in_channels)


def _default_out(args: argparse.Namespace) -> Path:
    stem = f"{args.model}_{args.dataset}"
    if args.fraction < 1:
        stem += f"_f{args.fraction:g}"
    stem += (
        f"_{args.recipe}"
        + ("_fast" if args.fast else "")
        + (f"_it{args.iterations}" if args.iterations else "")
    )
    return Path("runs") / f"{stem}_seed{args.seed}.json"


def run(args: argparse.Namespace) -> dict:
    """Train one configuration; write and return its results dictionary."""
    started = _dt.datetime.now(_dt.UTC)
    t_start = time.perf_counter()
    args.recipe = args.recipe or default_recipe(args.model)
    device = torch.device(args.device) if args.device else default_device()
    if args.threads:
        torch.set_num_threads(args.threads)
    train.seed_everything(args.seed)

    train_set, test_set = data.load(args.dataset, args.data_root, download=not args.no_download)
    if args.fraction < 1:
        train_set = train_set.subset(data.balanced_subset(train_set, args.fraction, seed=args.seed))
    if args.fast and len(test_set) > FAST_TEST_IMAGES:
        test_set = test_set.subset(
            data.balanced_subset(test_set, FAST_TEST_IMAGES / len(test_set), seed=0)
        )

    iterations = args.iterations or (FAST_ITERATIONS if args.fast else None)
    rec = train.recipe(args.recipe, iterations=iterations, batch_size=args.batch_size)
    model = build_model(args.model, train_set.num_classes, train_set.in_channels)
    bn_momentum = args.bn_momentum if args.bn_momentum is not None else (0.1 if args.fast else None)
    if bn_momentum is not None:
        train.set_bn_momentum(model, bn_momentum)

    train_loader = data.TensorLoader(train_set, rec.batch_size, device=device, seed=args.seed)
    test_loader = data.TensorLoader(
        test_set, args.eval_batch_size, shuffle=False, augment=False, device=device
    )

    out = Path(args.out) if args.out else _default_out(args)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".pt")
    metrics = out.with_suffix(".csv")
    trainer = train.Trainer(
        model,
        rec,
        device=device,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        progress=not args.no_progress,
        metrics_path=metrics,
        checkpoint_path=None if args.no_checkpoint else ckpt,
        eval_every=args.eval_every,
    )
    resumed = False
    if not args.no_checkpoint and not args.restart:
        resumed = trainer.resume_if_exists()
    trainer.fit(train_loader, test_loader)
    final = trainer.evaluate(test_loader)
    hist = trainer.history
    epoch_times, prev = [], 0
    for row in hist:  # full epochs only (the last one may be cut short by the schedule)
        if row["step"] - prev == len(train_loader):
            epoch_times.append(row["epoch_time_s"])
        prev = row["step"]
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "fraction": args.fraction,
        "train_images": len(train_set),
        "test_images": len(test_set),
        "recipe": rec.to_dict(),
        "fast": bool(args.fast),
        "seed": args.seed,
        "accuracy": final["acc"],
        "error": 1.0 - final["acc"],
        "test_loss": final["loss"],
        "params": count_parameters(model),
        "iterations": trainer.step,
        "epochs": trainer.epoch,
        "steps_per_epoch": len(train_loader),
        "wall_time_s": time.perf_counter() - t_start,
        "train_time_s": trainer.elapsed,
        "time_per_epoch_s": sum(epoch_times) / len(epoch_times) if epoch_times else None,
        "resumed": resumed,
        "hardware": hardware(device),
        "bn_momentum": bn_momentum,
        "amp": trainer.amp,
        "channels_last": bool(args.channels_last),
        "compile": bool(args.compile),
        "versions": {
            "revlib": __version__,
            "torch": torch.__version__,
            "torchvision": _tv_version(),
            "python": platform.python_version(),
        },
        "command": "python -m revlib.harness.experiments " + " ".join(args.argv),
        "started": started.isoformat(timespec="seconds"),
        "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "history": hist,
    }
    if resumed:
        result["note"] = (
            "resumed from a checkpoint: wall_time_s covers this session only, "
            "train_time_s all sessions"
        )
    train.atomic_write_text(json.dumps(result, indent=1) + "\n", out)
    result["path"] = str(out)
    return result


def _tv_version() -> str | None:
    try:
        import torchvision

        return torchvision.__version__
    except (
        ImportError,
        RuntimeError,
    ):  # missing, or built for another torch ("operator torchvision::nms does not exist")
        return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m revlib.harness.experiments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help=f"one of {', '.join(MODEL_NAMES)}")
    p.add_argument("--dataset", default="cifar10", choices=data.DATASETS)
    p.add_argument(
        "--recipe",
        choices=sorted(train.RECIPES),
        default=None,
        help="default: chang for the ODE networks, revnet otherwise",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="scale the recipe's schedule to this many updates",
    )
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    p.add_argument(
        "--fast",
        action="store_true",
        help=f"{FAST_ITERATIONS} iterations, test set capped at "
        f"{FAST_TEST_IMAGES} images: a smoke run",
    )
    p.add_argument(
        "--fraction", type=float, default=1.0, help="class-balanced fraction of the training set"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data-root",
        default=None,
        help="folder of the torchvision data sets (default $REVLIB_DATA or ./data)",
    )
    p.add_argument(
        "--no-download", action="store_true", help="never try to download a missing data set"
    )
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument(
        "--amp",
        default=None,
        choices=["bf16", "fp16", "auto"],
        help="mixed precision (default: float32)",
    )
    p.add_argument(
        "--bn-momentum",
        type=float,
        default=None,
        help="BatchNorm momentum "
        "(default: the model's, 0.01 = the official decay 0.99; --fast: 0.1)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every this many epochs")
    p.add_argument(
        "--out", default=None, help="results JSON (default runs/MODEL_DATASET_..._seedS.json)"
    )
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint file (default: the results path with .pt)"
    )
    p.add_argument("--no-checkpoint", action="store_true")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    if not 0 < args.fraction <= 1:
        raise SystemExit("--fraction must be in (0, 1]")
    try:
        result = run(args)
    except (
        data.DataUnavailableError,
        UnknownModelError,
    ) as exc:  # the command line's errors: a message, no traceback
        raise SystemExit(f"error: {exc}") from None
    print(
        f"{result['model']} on {result['dataset']}: test accuracy {result['accuracy']:.4f} "
        f"after {result['iterations']} iterations, {result['wall_time_s']:.1f} s "
        f"on {result['hardware']['name']}"
        f" -> {result['path']}"
    )
    return result


if __name__ == "__main__":
    main()
