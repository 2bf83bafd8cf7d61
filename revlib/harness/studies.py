"""Chapter 7's digits studies: accuracy at convergence, reversible vs autograd training, small data.

    python -m revlib.harness.studies grid --workers 2 --out revlib/harness/results/digits_study.json

runs the full grid on the CPU (one torch thread per worker process, each run
cached as its own JSON under ``--cache``, so a stopped grid continues where it
stopped) and writes the results file that the chapter compares its own re-runs
with. Everything here is small enough for a CPU: scikit-learn's 8x8 digits and
networks of about 19,000 parameters.

**Split.** :func:`digits_splits`: a fixed, class-stratified 60/20/20 split of
the 1,797 digits (1,079 training, 359 validation, 359 test images). Every
choice (when to lower the learning rate, when to stop, which weights to keep)
is made on the validation split; the test split is evaluated once per run, on
the weights that were chosen.

**Models.** :data:`ARCHITECTURES`: ResNet, RevNet, Hamiltonian, Midpoint and
Leapfrog networks built with :class:`revlib.models.revnet.PreActNet` and
:class:`revlib.models.ode.ODENet`, each with 18,300 to 19,100 parameters; the
depth in the name counts layers as the papers do.

**Training to convergence** (:func:`train_to_convergence`): the papers' SGD
recipe (momentum 0.9, batch 100, learning rate 0.1, weight decay 2e-4 on conv
and FC weights, plus Chang et al.'s weight smoothness 2e-4 for the ODE
networks), with the fixed milestones replaced by plateaus of the validation
accuracy: every ``check_every`` updates (one epoch of the full training split)
the validation accuracy is measured; after ``patience`` checks without a new
best the learning rate is divided by 10, and after the third plateau (the
recipe's two drops done) training stops. The weights of the best validation
check are restored and tested.

**Mode comparison** (:func:`compare_modes`): the same network, seed and
batches in ``mode="autograd"`` and ``mode="reversible"``, with a fixed
schedule; per-update losses, and the cosine between the reversible and the
autograd gradient of the same weights on the same batch, in float32 and under
bf16 autocast (as Gomez et al. 2017 measure the numerical error of the
reconstructed activations).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import data, train

__all__ = [
    "ARCHITECTURES",
    "ODE_NETWORKS",
    "Protocol",
    "Splits",
    "digits_splits",
    "build",
    "count_parameters",
    "train_to_convergence",
    "compare_modes",
    "gradient_cosine",
    "summarize",
    "separated",
    "GRID",
    "run_grid",
    "load_results",
    "PACKAGED_RESULTS",
    "select",
    "main",
]

# ------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Splits:
    """The digits' training, validation and test splits (normalised with the training split's mean image)."""

    train: data.ImageData
    val: data.ImageData
    test: data.ImageData


def digits_splits(val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """scikit-learn's digits split per class: ``round(test_fraction * n)`` test, ``round(val_fraction * n)`` validation.

    The images of each class are permuted by ``numpy.random.RandomState(seed)``
    (whose stream NumPy keeps fixed across versions); the first go to the test
    split, the next to the validation split, the rest to training. With the
    defaults: 1,079 / 359 / 359 images. Inputs are normalised by subtracting
    the training split's per-pixel mean image, as in the official RevNet code.
    """
    from sklearn.datasets import load_digits

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"studies.digits_splits: need 0 < val, test and val + test < 1, got {val_fraction}, {test_fraction}"
        )
    bunch = load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.uint8)).unsqueeze(
        1
    )  # (1797, 1, 8, 8), 0..16
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    rng = np.random.RandomState(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels.numpy() == c))
        n_test, n_val = (
            int(round(test_fraction * len(members))),
            int(round(val_fraction * len(members))),
        )
        parts["test"] += members[:n_test].tolist()
        parts["val"] += members[n_test : n_test + n_val].tolist()
        parts["train"] += members[n_test + n_val :].tolist()
    scale = 1.0 / 16.0
    idx = {k: torch.tensor(sorted(v)) for k, v in parts.items()}
    mean = (images[idx["train"]].double() * scale).mean(0).float()
    std = torch.ones(1, 1, 1)
    made = {
        k: data.ImageData(
            images[i].contiguous(), labels[i].contiguous(), 10, scale, mean, std, "digits", k
        )
        for k, i in idx.items()
    }
    return Splits(made["train"], made["val"], made["test"])


# ---------------------------------------------------------------------- models


def _resnet(mode: str = "autograd") -> nn.Module:
    from ..models.revnet import PreActNet

    return PreActNet(
        "basic",
        (1, 1, 1),
        (8, 8, 16, 32),
        (1, 2, 2),
        reversible=False,
        num_classes=10,
        in_channels=1,
    )


def _revnet(mode: str = "autograd") -> nn.Module:
    from ..models.revnet import PreActNet

    return PreActNet(
        "basic",
        (1, 2, 2),
        (8, 8, 16, 28),
        (1, 2, 2),
        reversible=True,
        num_classes=10,
        in_channels=1,
        mode=mode,
    )


def _ode(scheme: str, widths: tuple[int, int, int]) -> Callable[[str], nn.Module]:
    def make(mode: str = "autograd") -> nn.Module:
        from ..models.ode import ODENet

        # h = 0.3: two blocks per stage travel the integration time 0.6 of Chang et al.'s six blocks of h = 0.1
        return ODENet(scheme, (2, 2, 2), widths, num_classes=10, in_channels=1, mode=mode, h=0.3)

    return make


ARCHITECTURES: dict[str, Callable[[str], nn.Module]] = {
    "ResNet-8": _resnet,  # 3 basic units of 2 convs, + stem and FC
    "RevNet-22": _revnet,  # 5 reversible units of 2 x 2 convs, + stem and FC
    "Hamiltonian-26": _ode("hamiltonian", (12, 24, 48)),  # 6 blocks of K1, K1^T, K2, K2^T
    "Midpoint-14": _ode("midpoint", (12, 20, 28)),  # 6 blocks of K, K^T
    "Leapfrog-14": _ode("leapfrog", (12, 20, 28)),
}
"""Name -> ``builder(mode)`` of the five networks of equal parameter budget (8x8 grey inputs, 10 classes)."""

ODE_NETWORKS = ("Hamiltonian-26", "Midpoint-14", "Leapfrog-14")
"""The networks trained with Chang et al.'s weight smoothness."""


def build(name: str, mode: str = "autograd") -> nn.Module:
    """The network ``name`` of :data:`ARCHITECTURES` in backward mode ``mode`` (a ResNet has only ``"autograd"``)."""
    if name not in ARCHITECTURES:
        raise KeyError(
            f"studies.build: unknown network {name!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[name](mode)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable numbers."""
    return sum(
        p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values()
    )


# -------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class Protocol:
    """How :func:`train_to_convergence` trains: the papers' SGD recipe, learning-rate drops on validation plateaus.

    ``smoothness`` applies to the ODE networks only (Chang et al.'s weight
    smoothness, in the ``tf.nn.l2_loss`` convention of :func:`revlib.harness.train.smoothness_hook`).
    ``check_every`` is counted in updates, so a small training subset gets as
    many updates between checks as the full split. BatchNorm's momentum is
    PyTorch's 0.1: runs of a few thousand updates are too short for the
    official 0.01.
    """

    lr: float = 0.1
    momentum: float = 0.9
    batch_size: int = 100
    weight_decay: float = 2e-4
    smoothness: float = 2e-4
    bn_momentum: float = 0.1
    check_every: int = 11
    patience: int = 10
    drops: int = 2
    lr_factor: float = 0.1
    max_checks: int = 200


def _grad_vector(model: nn.Module) -> Tensor:
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten().double()
            for p in model.parameters()
        ]
    )


def _optimizer(model: nn.Module, protocol: Protocol) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        train.parameter_groups(model, protocol.weight_decay),
        lr=protocol.lr,
        momentum=protocol.momentum,
    )


def _extra_loss(name: str, protocol: Protocol) -> Callable[[nn.Module], Tensor] | None:
    return (
        train.smoothness_hook(protocol.smoothness)
        if name in ODE_NETWORKS and protocol.smoothness > 0
        else None
    )


def _batches(loader: data.TensorLoader):
    while True:
        yield from loader


def _loss(
    model: nn.Module, x: Tensor, y: Tensor, extra: Callable[[nn.Module], Tensor] | None
) -> tuple[Tensor, Tensor]:
    out = model(x)
    loss = F.cross_entropy(out.float(), y)
    return loss, (loss + extra(model) if extra is not None else loss)


def _eval_loader(split: data.ImageData) -> data.TensorLoader:
    return data.TensorLoader(split, 500, shuffle=False, augment=False)


def train_to_convergence(
    name: str,
    seed: int,
    splits: Splits,
    *,
    fraction: float = 1.0,
    mode: str = "autograd",
    protocol: Protocol = Protocol(),
    test: bool = True,
) -> dict[str, Any]:
    """Train network ``name`` until its validation accuracy stops improving; test the best weights once.

    ``seed`` seeds the initialisation, the batch order and augmentation, and
    (for ``fraction < 1``) the class-balanced subset of the training split.
    Returns a dict with ``curve`` (one row per check: update, learning rate,
    mean training loss since the last check, validation loss and accuracy),
    ``best_step``, ``val_acc`` (best), ``test_acc`` and ``test_loss`` (of the
    best weights), ``steps``, ``params``, ``train_images`` and ``seconds``.
    """
    t0 = time.perf_counter()
    train_set = splits.train
    if fraction < 1:
        train_set = train_set.subset(data.balanced_subset(train_set, fraction, seed=seed))
    train.seed_everything(seed)
    model = train.set_bn_momentum(build(name, mode), protocol.bn_momentum)
    opt = _optimizer(model, protocol)
    extra = _extra_loss(name, protocol)
    batches = _batches(data.TensorLoader(train_set, protocol.batch_size, seed=seed))
    val_loader = _eval_loader(splits.val)
    lr, drops, since, best_acc, best_step, best_state = protocol.lr, 0, 0, -1.0, 0, None
    curve: list[dict] = []
    step = 0
    model.train()
    for _ in range(protocol.max_checks):
        for g in opt.param_groups:
            g["lr"] = lr
        loss_sum = 0.0
        for _ in range(protocol.check_every):
            x, y = next(batches)
            loss, total = _loss(model, x, y, extra)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            loss_sum += loss.item()
            step += 1
        val = train.evaluate(model, val_loader, "cpu")
        curve.append(
            {
                "step": step,
                "lr": lr,
                "train_loss": loss_sum / protocol.check_every,
                "val_loss": val["loss"],
                "val_acc": val["acc"],
            }
        )
        if val["acc"] > best_acc:
            best_acc, best_step, since = val["acc"], step, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since += 1
        if since >= protocol.patience:
            if drops == protocol.drops:
                break
            lr, drops, since = lr * protocol.lr_factor, drops + 1, 0
    converged = since >= protocol.patience and drops == protocol.drops
    assert best_state is not None
    model.load_state_dict(best_state)
    result: dict[str, Any] = {
        "model": name,
        "seed": seed,
        "fraction": fraction,
        "mode": mode,
        "params": count_parameters(model),
        "train_images": len(train_set),
        "steps": step,
        "best_step": best_step,
        "val_acc": best_acc,
        "converged": converged,
        "curve": curve,
    }
    if test:
        r = train.evaluate(model, _eval_loader(splits.test), "cpu")
        result.update(test_acc=r["acc"], test_loss=r["loss"])
    result["seconds"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------- mode compare


def gradient_cosine(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    extra: Callable[[nn.Module], Tensor] | None,
    reference: Tensor | None = None,
) -> dict[str, float]:
    """Cosines between gradients of copies of ``model`` (a reversible network) on one batch.

    ``fp32``: reversible vs autograd gradient, float32. ``bf16``: the same pair
    under CPU bf16 autocast. ``bf16_vs_fp32``: the autograd bf16 gradient vs the
    autograd float32 one, the scale of bf16's own rounding. ``model`` itself is
    not changed (the copies' BatchNorm statistics absorb the extra forwards).
    ``reference``: the float32 reversible gradient if already computed.
    """
    from ..core.modes import set_mode

    def grad(mode: str, bf16: bool) -> Tensor:
        twin = copy.deepcopy(model)
        set_mode(twin, mode)
        twin.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = twin(x)
        loss = F.cross_entropy(out.float(), y)
        (loss + extra(twin) if extra is not None else loss).backward()
        return _grad_vector(twin)

    def cos(a: Tensor, b: Tensor) -> float:
        return float(F.cosine_similarity(a, b, dim=0))

    rev32 = reference if reference is not None else grad("reversible", False)
    ag32, rev16, ag16 = grad("autograd", False), grad("reversible", True), grad("autograd", True)
    return {"fp32": cos(rev32, ag32), "bf16": cos(rev16, ag16), "bf16_vs_fp32": cos(ag16, ag32)}


def compare_modes(
    name: str = "RevNet-22",
    seed: int = 0,
    splits: Splits | None = None,
    *,
    steps: int = 220,
    cosine_every: int = 20,
    control: float = 1e-7,
    protocol: Protocol = Protocol(),
) -> dict[str, Any]:
    """Train ``name`` from ``seed`` twice, ``mode="autograd"`` and ``mode="reversible"``, on the same batches.

    The schedule is fixed (learning rate divided by 10 after 1/2 and 3/4 of
    ``steps``, as in the papers' recipe) so that both runs take the same
    updates. Every ``cosine_every`` updates, before the reversible run's
    update, :func:`gradient_cosine` compares its gradient with autograd's on
    the same weights and batch. If ``control`` is non-zero, a third run
    (``"control"``, autograd) starts from the same weights each multiplied by
    ``1 + control * N(0, 1)``: how far two runs drift apart from a difference
    of the size of float32 rounding, whatever its source. Returns per-update
    losses of the runs, the cosines, and each run's final validation and test
    accuracy.
    """
    splits = splits or digits_splits()
    milestones = (steps // 2, (3 * steps) // 4)
    out: dict[str, Any] = {
        "model": name,
        "seed": seed,
        "steps": steps,
        "milestones": list(milestones),
        "cosine_every": cosine_every,
        "control_perturbation": control,
    }
    extra = _extra_loss(name, protocol)
    for run in ("autograd", "reversible", "control") if control else ("autograd", "reversible"):
        mode = "autograd" if run == "control" else run
        t0 = time.perf_counter()
        train.seed_everything(seed)
        model = train.set_bn_momentum(build(name, mode), protocol.bn_momentum)
        if run == "control":
            noise = torch.Generator().manual_seed(seed + 12345)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + control * torch.randn(p.shape, generator=noise))
        opt = _optimizer(model, protocol)
        batches = _batches(data.TensorLoader(splits.train, protocol.batch_size, seed=seed))
        losses, cosines = [], []
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = protocol.lr * protocol.lr_factor ** sum(step >= m for m in milestones)
            x, y = next(batches)
            loss, total = _loss(model, x, y, extra)
            opt.zero_grad(set_to_none=True)
            total.backward()
            if run == "reversible" and step % cosine_every == 0:
                before = copy.deepcopy(model)  # the weights that produced this gradient
                cosines.append(
                    {
                        "step": step,
                        **gradient_cosine(before, x, y, extra, reference=_grad_vector(model)),
                    }
                )
            opt.step()
            losses.append(loss.item())
        out[run] = {
            "loss": losses,
            "val_acc": train.evaluate(model, _eval_loader(splits.val), "cpu")["acc"],
            "test_acc": train.evaluate(model, _eval_loader(splits.test), "cpu")["acc"],
            "seconds": time.perf_counter() - t0,
        }
        if run == "reversible":
            out["cosine"] = cosines
    a, r = out["autograd"]["loss"], out["reversible"]["loss"]
    out["max_loss_difference"] = max(abs(u - v) for u, v in zip(a, r))
    out["test_acc_difference"] = abs(out["autograd"]["test_acc"] - out["reversible"]["test_acc"])
    if control:
        c = out["control"]["loss"]
        out["max_loss_difference_control"] = max(abs(u - v) for u, v in zip(a, c))
        out["test_acc_difference_control"] = abs(
            out["autograd"]["test_acc"] - out["control"]["test_acc"]
        )
    return out


# ---------------------------------------------------------------- statistics


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and standard error of the mean (n >= 2)."""
    if len(values) < 2:
        raise ValueError(f"studies.summarize: need at least two values, got {len(values)}")
    mean, std = statistics.mean(values), statistics.stdev(values)
    return {"mean": mean, "std": std, "sem": std / math.sqrt(len(values)), "n": len(values)}


def separated(a: Sequence[float], b: Sequence[float], z: float = 2.0) -> tuple[float, float, bool]:
    """(mean(a) - mean(b), standard error of that difference, |difference| > z standard errors)."""
    sa, sb = summarize(a), summarize(b)
    diff = sa["mean"] - sb["mean"]
    se = math.sqrt(sa["sem"] ** 2 + sb["sem"] ** 2)
    return diff, se, abs(diff) > z * se


# ---------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Grid:
    """The full set of runs behind the chapter's tables."""

    models: tuple[str, ...] = tuple(ARCHITECTURES)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    small_models: tuple[str, ...] = ("ResNet-8", "Hamiltonian-26")
    fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 1.0)
    small_seeds: tuple[int, ...] = tuple(range(10))
    compare: tuple[str, ...] = ("RevNet-22", "Hamiltonian-26")
    compare_steps: int = 220


GRID = Grid()


def _jobs(grid: Grid) -> list[tuple]:
    jobs = {("converge", m, 1.0, s) for m in grid.models for s in grid.seeds}
    jobs |= {
        ("converge", m, f, s)
        for m in grid.small_models
        for f in grid.fractions
        for s in grid.small_seeds
    }
    jobs |= {("compare", m, 1.0, 0) for m in grid.compare}
    # the mode comparisons first, then the full-data runs seed by seed, then the subsets seed by seed
    return sorted(jobs, key=lambda j: (j[0] != "compare", j[2] < 1, j[3], j[1], j[2]))


def _job_path(cache: Path, job: tuple) -> Path:
    kind, model, fraction, seed = job
    return cache / f"{kind}_{model}_f{fraction:g}_seed{seed}.json"


def _run_job(job: tuple, cache: str, compare_steps: int) -> str:
    torch.set_num_threads(1)
    path = _job_path(Path(cache), job)
    if path.exists():
        return str(path)
    kind, model, fraction, seed = job
    splits = digits_splits()
    if kind == "compare":
        result = compare_modes(model, seed, splits, steps=compare_steps)
    else:
        result = train_to_convergence(model, seed, splits, fraction=fraction)
    train.atomic_write_text(json.dumps(result) + "\n", path)
    return str(path)


def run_grid(
    grid: Grid = GRID,
    cache: str | Path = "runs/studies",
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every job of ``grid`` not yet in ``cache`` (``workers`` processes of one thread); return the collected results."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(grid)
    t0 = time.perf_counter()
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_run_job, j, str(cache), grid.compare_steps): j for j in jobs}
            for i, fut in enumerate(as_completed(futures), 1):
                log(f"[{i}/{len(jobs)}] {time.perf_counter() - t0:7.0f} s  {fut.result()}")
    else:
        for i, j in enumerate(jobs, 1):
            log(
                f"[{i}/{len(jobs)}] {time.perf_counter() - t0:7.0f} s  {_run_job(j, str(cache), grid.compare_steps)}"
            )
    return collect(grid, cache)


def collect(grid: Grid, cache: str | Path) -> dict[str, Any]:
    """The results file's content, from the cached runs of ``grid``."""
    cache = Path(cache)
    runs, compare = [], {}
    for job in _jobs(grid):
        r = json.loads(_job_path(cache, job).read_text())
        if job[0] == "compare":
            compare[job[1]] = r
        else:
            runs.append(r)
    from ..core.device import hardware

    return {
        "format": "revlib.harness.studies/1",
        "command": "python -m revlib.harness.studies grid",
        "grid": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(grid).items()},
        "protocol": asdict(Protocol()),
        "split": {k: len(getattr(digits_splits(), k)) for k in ("train", "val", "test")},
        "hardware": hardware(torch.device("cpu")),
        "torch": torch.__version__,
        "threads_per_run": 1,
        "runs": runs,
        "compare": compare,
    }


PACKAGED_RESULTS = "results/digits_study.json"
"""The committed results file, shipped inside ``revlib.harness`` so that it is
there wherever revlib is installed (a checkout, Colab), without a download."""


def load_results(path: str | Path | None = None) -> dict[str, Any]:
    """A results file written by :func:`main`: ``path``, or the file shipped with revlib (``None``).

    Raises ``FileNotFoundError`` naming the command that makes the file when
    ``path`` does not exist, and ``ValueError`` when it is not such a file.
    """
    if path is None:
        from importlib.resources import files

        path = files("revlib.harness").joinpath(PACKAGED_RESULTS)
        text = path.read_text()
    else:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"studies: no results file {path}; make it with "
                f"`python -m revlib.harness.studies grid --out {path}`"
            )
        text = path.read_text()
    result = json.loads(text)
    if result.get("format") != "revlib.harness.studies/1":
        raise ValueError(f"studies: {path} is not a revlib.harness.studies results file")
    return result


def select(
    results: dict[str, Any],
    model: str,
    fraction: float = 1.0,
    key: str = "test_acc",
    seeds: Sequence[int] | None = None,
) -> dict[int, float]:
    """Seed -> ``key`` of the converged runs of ``model`` at ``fraction`` in a results file (only ``seeds`` if given)."""
    return {
        r["seed"]: r[key]
        for r in sorted(results["runs"], key=lambda r: r["seed"])
        if r["model"] == model
        and r["fraction"] == fraction
        and (seeds is None or r["seed"] in seeds)
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m revlib.harness.studies",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grid", help="run the full grid and write the results file")
    g.add_argument("--out", default="revlib/harness/results/digits_study.json")
    g.add_argument(
        "--cache", default="runs/studies", help="one JSON per finished run; a rerun skips them"
    )
    g.add_argument("--workers", type=int, default=1, help="processes (one torch thread each)")
    g.add_argument(
        "--collect-only",
        action="store_true",
        help="write the results file from the cache, run nothing",
    )
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(1)
    result = (
        collect(GRID, args.cache) if args.collect_only else run_grid(GRID, args.cache, args.workers)
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    train.atomic_write_text(json.dumps(result, indent=0) + "\n", out)
    print(f"wrote {out}: {len(result['runs'])} runs, {len(result['compare'])} mode comparisons")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
