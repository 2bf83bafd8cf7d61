"""A training loop for notebooks: the papers' SGD recipes, mixed precision, exact resume.

Example::

    from revlib import models
    from revlib.harness import data, train
    tr, te = data.load("cifar10")
    device = revlib.default_device()
    loaders = data.TensorLoader(tr, 100, device=device), data.TensorLoader(te, 500, shuffle=False, augment=False, device=device)
    trainer = train.Trainer(models.revnet38(), train.recipe("revnet"), device=device, amp="auto",
                            checkpoint_path="runs/revnet38.pt", metrics_path="runs/revnet38.csv")
    trainer.resume_if_exists()        # a Colab session that was cut off continues where it stopped
    history = trainer.fit(*loaders)   # list of per-epoch dicts
    train.plot_history(history)

**Recipes** (:class:`Recipe`, :func:`recipe`). ``"revnet"`` is the official
RevNet CIFAR recipe: SGD with momentum 0.9, batch 100, learning rate 0.1,
divided by 10 after 40k and 60k of 80k iterations, weight decay 2e-4 on the
convolution and fully connected weights only. ``"chang"`` is Chang et al.'s: the
same plus weight smoothness 2e-4. ``recipe(name, iterations=n)`` scales the
milestones to a shorter run (same fractions, 1/2 and 3/4 of the run).

**Weight decay** goes to every parameter with two or more dimensions
(convolution kernels, including kernels that a custom layer keeps as a raw
``nn.Parameter``, and fully connected weight matrices), and not to BatchNorm
scales and shifts, biases or scalar step sizes (:func:`parameter_groups`).

**Exact resume.** A checkpoint holds the model, the optimizer (momentum
buffers), the gradient scaler, the step, the history, and the random state:
torch (CPU and CUDA), NumPy and Python, the state at the start of the current
epoch of every ``torch.Generator`` the train loader uses, and how many batches
of the epoch were done. Resuming restores the epoch's start state, re-creates
the loader's iterator, skips the batches already done, then restores the
random state of the moment of the checkpoint. On a CPU the resumed run gives
bit-for-bit the weights of an uninterrupted run (a test checks); on a GPU it
continues the same schedule and the same data order, but cuDNN kernels need not
be deterministic. Checkpoints and metric files are written to a temporary file
that then replaces the old one (``os.replace``), so an interruption during a
save never leaves a broken checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.device import default_device

__all__ = [
    "Recipe",
    "RECIPES",
    "recipe",
    "parameter_groups",
    "decayed_parameter_names",
    "Trainer",
    "fit",
    "evaluate",
    "seed_everything",
    "atomic_save",
    "atomic_write_text",
    "write_metrics",
    "plot_history",
    "smoothness_hook",
    "set_bn_momentum",
]

Amp = Literal["bf16", "fp16", "auto"] | None


# ----------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class Recipe:
    """An SGD recipe with a piecewise-constant learning rate, counted in iterations.

    The learning rate for update number ``step`` (0-based) is
    ``lr * lr_factor ** (number of milestones <= step)``: with the RevNet
    recipe, updates 0..39,999 use 0.1, updates 40,000..59,999 use 0.01 and
    updates 60,000..79,999 use 0.001.
    """

    name: str = "revnet"
    iterations: int = 80_000
    batch_size: int = 100
    lr: float = 0.1
    milestones: tuple[int, ...] = (40_000, 60_000)
    lr_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    smoothness: float = 0.0
    source: str = ""

    def lr_at(self, step: int) -> float:
        """Learning rate of update number ``step`` (0-based)."""
        return self.lr * self.lr_factor ** sum(step >= m for m in self.milestones)

    def scaled(self, iterations: int, batch_size: int | None = None) -> "Recipe":
        """The same recipe over ``iterations`` updates, milestones at the same fractions of the run."""
        iterations = int(iterations)
        if iterations < 1:
            raise ValueError(f"iterations must be positive, got {iterations}")
        ms = tuple(int(round(m * iterations / self.iterations)) for m in self.milestones)
        return replace(self, iterations=iterations, milestones=ms,
                       batch_size=self.batch_size if batch_size is None else int(batch_size),
                       name=self.name if iterations == self.iterations else f"{self.name} scaled to {iterations} it")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


RECIPES: dict[str, Recipe] = {
    "revnet": Recipe(
        "revnet", source="Gomez et al. 2017, official RevNet code (CIFAR): SGD momentum 0.9, batch 100, "
        "lr 0.1 -> 0.01 -> 0.001 at 40k/60k of 80k iterations, wd 2e-4 on conv and FC weights"),
    "chang": Recipe(
        "chang", smoothness=2e-4, source="Chang et al. 2018 (CIFAR): the RevNet recipe plus weight smoothness 2e-4"),
    "chang_stl10": Recipe(
        "chang_stl10", iterations=20_000, batch_size=128, milestones=(10_000, 15_000), weight_decay=5e-4,
        smoothness=3e-4, source="Chang et al. 2018 (STL-10, secondary source): batch 128, wd 5e-4, smoothness 3e-4, "
        "20k steps; the milestones (1/2 and 3/4 of the run) are ours, not the paper's"),
}


def recipe(name: str | Recipe = "revnet", iterations: int | None = None, batch_size: int | None = None) -> Recipe:
    """A recipe from :data:`RECIPES`, optionally scaled to ``iterations`` updates (see :meth:`Recipe.scaled`)."""
    r = name if isinstance(name, Recipe) else RECIPES[name]
    if iterations is not None or batch_size is not None:
        r = r.scaled(r.iterations if iterations is None else iterations, batch_size)
    return r


# ------------------------------------------------------------- parameter groups


def _decays(name: str, p: nn.Parameter) -> bool:
    return p.ndim >= 2


def parameter_groups(model: nn.Module, weight_decay: float,
                     decay_filter: Callable[[str, nn.Parameter], bool] | None = None) -> list[dict]:
    """Two SGD parameter groups: weights with decay, everything else without.

    By default a parameter is decayed when it has two or more dimensions:
    convolution kernels and fully connected weights, but not BatchNorm's scale
    and shift, biases, or scalars such as a learnable step size. Pass
    ``decay_filter(name, param) -> bool`` to choose differently. Parameters
    shared between modules appear once.
    """
    decide = decay_filter or _decays
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if decide(name, p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def decayed_parameter_names(model: nn.Module, decay_filter=None) -> tuple[list[str], list[str]]:
    """(names with weight decay, names without), as :func:`parameter_groups` splits them."""
    decide = decay_filter or _decays
    yes, no = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (yes if decide(name, p) else no).append(name)
    return yes, no


# ------------------------------------------------------------------- smoothness


def smoothness_hook(rate: float, h: float | None = None) -> Callable[[nn.Module], Tensor]:
    """``extra_loss(model)`` for Chang et al.'s weight smoothness decay (:func:`revlib.core.smoothness.weight_smoothness`).

    ``rate`` is in the convention of Chang et al.'s code, like the weight
    decay: the coefficient of ``tf.nn.l2_loss`` (half the squared norm), so
    ``rate = 2e-4`` adds ``1e-4 * sum_j ||K_j - K_{j+1}||^2`` to the loss. Any
    callable ``extra_loss(model) -> Tensor`` may be given to :class:`Trainer`
    instead.
    """
    from ..core.smoothness import weight_smoothness

    def extra(model: nn.Module) -> Tensor:
        return weight_smoothness(model, rate / 2, h=h)

    extra.__name__ = f"weight_smoothness(rate={rate:g})"
    return extra


def set_bn_momentum(model: nn.Module, momentum: float) -> nn.Module:
    """Set the running-statistics momentum of every BatchNorm layer (PyTorch's convention).

    The official RevNet code uses a decay of 0.99 (momentum 0.01 here): right
    for 80k iterations, but after a run of a hundred steps the running
    statistics are still mostly their initial values and the eval-mode accuracy
    is meaningless. Short runs (``--fast``, the book's CPU runs) use 0.1.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
    return model


# ----------------------------------------------------------------- randomness


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _global_rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }
    return state


def _set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """Every torch.Generator a loader draws from (its own, its sampler's, its batch sampler's)."""
    found, seen = [], set()
    for owner in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and id(g) not in seen:
            seen.add(id(g))
            found.append(g)
    return found


def _rng_snapshot(loader: Any) -> dict:
    return {"global": _global_rng_state(), "loader": [g.get_state() for g in _loader_generators(loader)]}


def _restore_rng(snapshot: dict, loader: Any) -> None:
    _set_global_rng_state(snapshot["global"])
    gens = _loader_generators(loader)
    if len(gens) != len(snapshot["loader"]):
        raise RuntimeError(f"the train loader has {len(gens)} generators, the checkpoint {len(snapshot['loader'])}: "
                           "resume with a loader built the same way")
    for g, s in zip(gens, snapshot["loader"]):
        g.set_state(s)


# ------------------------------------------------------------------ atomic files


def _atomic_write(path: str | os.PathLike, mode: str, write: Callable[[Any], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then ``os.replace``.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` it onto ``path``."""
    return _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    return _atomic_write(path, "w", lambda f: f.write(text))


def write_metrics(history: Sequence[dict], path: str | os.PathLike) -> Path:
    """Per-epoch metrics to ``.json`` (a list of objects) or ``.csv`` (one row per epoch), atomically."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
        return atomic_write_text(buf.getvalue(), path)
    return atomic_write_text(json.dumps(list(history), indent=1) + "\n", path)


# ----------------------------------------------------------------------- trainer


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _resolve_amp(amp: Amp, device: torch.device) -> str | None:
    if amp in (None, False, "none", "fp32"):
        return None
    if amp == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return None
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be None, 'bf16', 'fp16' or 'auto', got {amp!r}")
    return amp


def _to(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str | None = None, amp: Amp = None,
             channels_last: bool = False) -> dict:
    """Mean cross-entropy loss and accuracy of ``model`` (in eval mode) over ``loader``."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    amp = _resolve_amp(amp, device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    try:
        for x, y in loader:
            x, y = _to(x, device, channels_last), y.to(device, non_blocking=True)
            with _autocast(device, amp):
                out = model(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            n += len(y)
    finally:
        model.train(was_training)
    return {"loss": loss_sum.item() / max(n, 1), "acc": correct.item() / max(n, 1), "n": n}


class Trainer:
    """Train a classifier with an SGD :class:`Recipe`; resumable exactly from its checkpoints.

    Args:
        model: an ``nn.Module`` mapping images to class logits.
        recipe: a :class:`Recipe` or the name of one in :data:`RECIPES`. Its
            ``batch_size`` is informative: the loader decides the batch size.
        device: default :func:`revlib.default_device` (CUDA, then MPS, then CPU).
        amp: ``None`` (float32), ``"bf16"`` (bfloat16 autocast), ``"fp16"``
            (float16 autocast with ``torch.amp.GradScaler``) or ``"auto"``
            (bf16 on CUDA GPUs that support it, else fp16 on CUDA, else none).
        channels_last: store the model and the input batches in channels-last
            memory format (faster convolutions on recent GPUs).
        compile: run the forward through ``torch.compile`` (the checkpoint stores
            the uncompiled module's weights, so resuming works either way).
        extra_loss: ``extra_loss(model) -> Tensor`` added to every step's loss
            (outside autocast, in float32). If ``None`` and the recipe has
            ``smoothness > 0``, ``smoothness_hook(recipe.smoothness)`` is used.
        decay_filter: see :func:`parameter_groups`.
        progress: show a tqdm bar with loss, accuracy and images/s.
        metrics_path: ``.json`` or ``.csv`` file rewritten after every epoch.
        checkpoint_path: where :meth:`save` writes; also written after every epoch
            if ``checkpoint_every_epoch``, and every ``checkpoint_every`` steps.
        eval_every: evaluate on the test loader every this many epochs (and at the end).
        log_every: steps between progress-bar updates (each costs a device sync).
    """

    def __init__(self, model: nn.Module, recipe: Recipe | str = "revnet", *, device: torch.device | str | None = None,
                 amp: Amp = None, channels_last: bool = False, compile: bool = False,
                 extra_loss: Callable[[nn.Module], Tensor] | None = None, decay_filter=None, progress: bool = True,
                 metrics_path: str | os.PathLike | None = None, checkpoint_path: str | os.PathLike | None = None,
                 checkpoint_every: int | None = None, checkpoint_every_epoch: bool = True, eval_every: int = 1,
                 log_every: int = 10) -> None:
        self.recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
        self.device = torch.device(device) if device is not None else default_device()
        self.amp = _resolve_amp(amp, self.device)
        self.channels_last = channels_last
        self.model = model.to(self.device, memory_format=torch.channels_last) if channels_last else model.to(self.device)
        self.forward = torch.compile(self.model) if compile else self.model
        self.compiled = compile
        if extra_loss is None and self.recipe.smoothness > 0:
            extra_loss = smoothness_hook(self.recipe.smoothness)
        self.extra_loss = extra_loss
        self.optimizer = torch.optim.SGD(parameter_groups(self.model, self.recipe.weight_decay, decay_filter),
                                         lr=self.recipe.lr, momentum=self.recipe.momentum)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == "fp16" else None
        self.progress = progress
        self.metrics_path = Path(metrics_path) if metrics_path is not None else None
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.checkpoint_every = checkpoint_every
        self.checkpoint_every_epoch = checkpoint_every_epoch
        self.eval_every = max(1, int(eval_every))
        self.log_every = max(1, int(log_every))
        # progress
        self.step = 0
        self.epoch = 0  # completed epochs
        self.history: list[dict] = []
        self.elapsed = 0.0  # seconds of training and evaluation, summed over sessions
        self._epoch: dict | None = None  # state of the epoch in progress
        self._resume_rng: dict | None = None
        self._loader: Iterable | None = None  # the train loader of the last fit, whose generators a checkpoint saves

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything a resume needs, in types that ``torch.load(weights_only=True)`` accepts."""
        epoch = None
        if self._epoch is not None:
            epoch = {k: v for k, v in self._epoch.items() if k != "iterator"}
            epoch["loss_sum"] = float(epoch["loss_sum"])  # float64 tensor -> float: exact
            epoch["correct"] = int(epoch["correct"])
        return {
            "format": "revlib.harness.train/1",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "recipe": self.recipe.to_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "history": self.history,
            "elapsed": self.elapsed,
            "epoch_in_progress": epoch,
            "rng": _rng_snapshot(self._loader) if self._loader is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != "revlib.harness.train/1":
            raise ValueError("not a revlib.harness.train checkpoint")
        if state["recipe"] != self.recipe.to_dict():
            warnings.warn(f"the checkpoint's recipe {state['recipe']} differs from this trainer's {self.recipe.to_dict()}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.history = list(state["history"])
        self.elapsed = state["elapsed"]
        self._epoch = None
        if state["epoch_in_progress"] is not None:
            self._epoch = dict(state["epoch_in_progress"])
            self._epoch["loss_sum"] = torch.tensor(self._epoch["loss_sum"], dtype=torch.float64, device=self.device)
            self._epoch["correct"] = torch.tensor(self._epoch["correct"], dtype=torch.int64, device=self.device)
        self._resume_rng = state["rng"]

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write a checkpoint atomically (to ``path`` or ``checkpoint_path``)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: pass one, or set checkpoint_path")
        return atomic_save(self.state_dict(), path)

    def resume(self, path: str | os.PathLike | None = None) -> "Trainer":
        """Load a checkpoint; the next :meth:`fit` continues exactly where it was written."""
        path = Path(path) if path is not None else self.checkpoint_path
        # on the CPU: RNG states must stay CPU tensors; load_state_dict moves weights and momenta to the device
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return self

    def resume_if_exists(self, path: str | os.PathLike | None = None) -> bool:
        """:meth:`resume` if the checkpoint file exists; True if it did."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is not None and path.exists():
            self.resume(path)
            return True
        return False

    @property
    def done(self) -> bool:
        return self.step >= self.recipe.iterations

    # ------------------------------------------------------------ training
    def _start_epoch(self, loader: Iterable) -> None:
        start_rng = _rng_snapshot(loader)
        # loss_sum and correct stay on the device (float64, int64) and are summed step by step in a fixed
        # order, so that a resumed run reports the same numbers as an uninterrupted one
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self._epoch = {"start_rng": start_rng, "batches": 0, "loss_sum": zero, "correct": zero.long(), "seen": 0,
                       "train_time": 0.0, "iterator": iter(loader)}

    def _continue_epoch(self, loader: Iterable) -> None:
        """Rebuild the iterator of a resumed epoch: replay its start, skip the batches done."""
        e = self._epoch
        _restore_rng(e["start_rng"], loader)
        it = iter(loader)
        for _ in range(e["batches"]):
            next(it)
        e["iterator"] = it
        _restore_rng(self._resume_rng, loader)

    def _train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        lr = self.recipe.lr_at(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x, y = _to(x, self.device, self.channels_last), y.to(self.device, non_blocking=True)
        with _autocast(self.device, self.amp):
            out = self.forward(x)
        loss = F.cross_entropy(out.float(), y)
        total = loss + self.extra_loss(self.model) if self.extra_loss is not None else loss
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()
        self.step += 1
        return loss.detach() * len(y), (out.detach().argmax(1) == y).sum()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def _end_epoch(self, test_loader: Iterable | None, bar) -> None:
        e = self._epoch
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            "step": self.step,
            "lr": self.recipe.lr_at(self.step - 1),
            "train_loss": float(e["loss_sum"]) / max(e["seen"], 1),
            "train_acc": int(e["correct"]) / max(e["seen"], 1),
            "images_per_s": e["seen"] / e["train_time"] if e["train_time"] > 0 else float("nan"),
            "epoch_time_s": e["train_time"],
        }
        t = time.perf_counter()
        if test_loader is not None and (self.epoch % self.eval_every == 0 or self.done):
            r = evaluate(self.forward, test_loader, self.device, self.amp, self.channels_last)
            row.update(test_loss=r["loss"], test_acc=r["acc"])
        self.elapsed += time.perf_counter() - t
        row["elapsed_s"] = self.elapsed
        self.history.append(row)
        self._epoch = None
        if bar is not None:
            msg = f"epoch {self.epoch}: train acc {row['train_acc']:.3f}"
            if "test_acc" in row:
                msg += f", test acc {row['test_acc']:.3f}"
            bar.write(msg)
        if self.metrics_path is not None:
            write_metrics(self.history, self.metrics_path)
        if self.checkpoint_path is not None and self.checkpoint_every_epoch:
            self.save()

    def fit(self, train_loader: Iterable, test_loader: Iterable | None = None, *,
            stop_at: int | None = None) -> list[dict]:
        """Train until ``recipe.iterations`` updates (or until step ``stop_at``); return the history.

        An epoch is one pass over ``train_loader`` (``len(train_loader)``
        batches); the last epoch may be cut short by the end of the recipe.
        After each epoch the history gains a row (step, learning rate, train
        loss and accuracy measured on the augmented batches in train mode,
        images/s, test loss and accuracy), the metrics file is rewritten and,
        if ``checkpoint_path`` is set, a checkpoint is written.
        ``stop_at`` stops early (a checkpoint is written if ``checkpoint_path``
        is set); a later :meth:`fit`, or a fresh trainer after :meth:`resume`,
        continues the same run.
        """
        end = self.recipe.iterations if stop_at is None else min(int(stop_at), self.recipe.iterations)
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
        if steps_per_epoch == 0:
            raise ValueError("the train loader is empty")
        self.model.train()
        self._loader = train_loader
        if self._epoch is not None and "iterator" not in self._epoch:
            self._continue_epoch(train_loader)  # resumed inside an epoch
        elif self._resume_rng is not None:
            _restore_rng(self._resume_rng, train_loader)  # resumed at the end of an epoch
        self._resume_rng = None
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.recipe.iterations, initial=self.step, desc="train", unit="it", dynamic_ncols=True)
        try:
            while self.step < end:
                if self._epoch is None:
                    self._start_epoch(train_loader)
                e = self._epoch
                t0 = time.perf_counter()
                x, y = next(e["iterator"])
                loss_sum, correct = self._train_step(x, y)
                e["loss_sum"] += loss_sum.double()
                e["correct"] += correct
                e["seen"] += len(y)
                e["batches"] += 1
                last_of_epoch = e["batches"] == steps_per_epoch or self.step >= self.recipe.iterations
                show = bar is not None and (self.step % self.log_every == 0 or last_of_epoch)
                if show or last_of_epoch or self.step >= end:
                    self._sync()  # one device sync per log_every steps
                dt = time.perf_counter() - t0
                e["train_time"] += dt
                self.elapsed += dt
                if bar is not None:
                    bar.update(1)
                    if show:
                        seen = e["seen"]
                        bar.set_postfix(epoch=self.epoch + 1, loss=f"{float(e['loss_sum']) / seen:.3f}",
                                        acc=f"{int(e['correct']) / seen:.3f}",
                                        img_s=f"{seen / max(e['train_time'], 1e-9):.0f}", refresh=False)
                if last_of_epoch:
                    self._end_epoch(test_loader, bar)
                elif self.checkpoint_path is not None and self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save()
            if self.checkpoint_path is not None and self._epoch is not None:
                self.save()  # stopped inside an epoch (stop_at): keep the place
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def evaluate(self, loader: Iterable) -> dict:
        """Test loss and accuracy with the trainer's device and precision."""
        return evaluate(self.forward, loader, self.device, self.amp, self.channels_last)


def fit(model: nn.Module, train_loader: Iterable, test_loader: Iterable | None = None,
        recipe: Recipe | str = "revnet", **kwargs: Any) -> Trainer:
    """Build a :class:`Trainer`, resume from ``checkpoint_path`` if it exists, train; return the trainer."""
    trainer = Trainer(model, recipe, **kwargs)
    trainer.resume_if_exists()
    trainer.fit(train_loader, test_loader)
    return trainer


# ------------------------------------------------------------------------- plots


def plot_history(histories: Sequence[dict] | dict[str, Sequence[dict]], *, x: str = "epoch", title: str | None = None):
    """Training curves: loss (left) and accuracy (right), train dashed and test solid.

    ``histories`` is one history (a list of per-epoch dicts, as :meth:`Trainer.fit`
    returns or the metrics file holds) or a dict ``label -> history``. Returns the
    matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    if isinstance(histories, dict):
        items = list(histories.items())
    else:
        items = [("", histories)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (label, hist) in enumerate(items):
        color = f"C{i}"
        xs = [row[x] for row in hist]
        for ax, key in zip(axes, ("loss", "acc")):
            tr = [row.get(f"train_{key}", math.nan) for row in hist]
            ax.plot(xs, tr, "--", color=color, alpha=0.8, label=f"{label} train".strip())
            te = [row.get(f"test_{key}", math.nan) for row in hist]
            if any(not math.isnan(v) for v in te):
                ax.plot(xs, te, "-", color=color, label=f"{label} test".strip())
    axes[0].set_ylabel("cross-entropy loss")
    axes[1].set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
