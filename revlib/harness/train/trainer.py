"""The training loop: mixed precision, per-epoch metrics, checkpoints and exact resume.

**Exact resume.** A checkpoint holds the model, the optimizer (momentum
buffers), the gradient scaler, the step, the history, and the random state:
torch (CPU and CUDA), NumPy and Python, the state at the start of the current
epoch of every ``torch.Generator`` the train loader uses, and how many batches
of the epoch were done (:class:`EpochState`). Resuming restores the epoch's
start state, re-creates the loader's iterator, skips the batches already done,
then restores the random state of the moment of the checkpoint. On a CPU the
resumed run gives bit-for-bit the weights of an uninterrupted run (a test
checks); on a GPU it continues the same schedule and the same data order, but
cuDNN kernels need not be deterministic.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ...core.device import default_device, synchronize
from .checkpoints import atomic_save, restore_rng, rng_snapshot, write_metrics
from .recipes import RECIPES, DecayFilter, LrScale, Recipe, parameter_groups, smoothness_hook

__all__ = ["Amp", "EpochState", "Trainer", "evaluate", "synchronize"]

Amp = Literal["bf16", "fp16", "auto"] | None

CHECKPOINT_FORMAT = "revlib.harness.train/1"


def _resolve_amp(amp: Amp, device: torch.device) -> Literal["bf16", "fp16"] | None:
    if amp in (None, False, "none", "fp32"):
        return None
    if amp == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return None
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be None, 'bf16', 'fp16' or 'auto', got {amp!r}")
    return amp


def _autocast(
    device: torch.device, amp: str | None
) -> contextlib.nullcontext[None] | torch.autocast:
    if amp is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str | None = None,
    amp: Amp = None,
    channels_last: bool = False,
) -> dict:
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
            loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            n += len(y)
    finally:
        model.train(was_training)
    return {"loss": loss_sum.item() / max(n, 1), "acc": correct.item() / max(n, 1), "n": n}


@dataclass
class EpochState:
    """The epoch in progress: where it started and what it has summed so far.

    ``loss_sum`` (float64) and ``correct`` (int64) stay on the device and are
    summed step by step in a fixed order, so that a resumed run reports the
    same numbers as an uninterrupted one. ``start_rng`` is the
    :func:`~revlib.harness.train.checkpoints.rng_snapshot` taken before the
    epoch's iterator was made: replaying it and skipping ``batches`` batches
    rebuilds the iterator after a resume.
    """

    start_rng: dict
    loss_sum: Tensor
    correct: Tensor
    batches: int = 0
    seen: int = 0
    train_time: float = 0.0

    @classmethod
    def start(cls, loader: Iterable, device: torch.device) -> EpochState:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return cls(rng_snapshot(loader), zero, zero.long())

    def add(self, loss_sum: Tensor, correct: Tensor, n: int) -> None:
        """Count one batch of ``n`` images, its summed loss and its correct predictions."""
        self.loss_sum += loss_sum.double()
        self.correct += correct
        self.seen += n
        self.batches += 1

    def metrics(self) -> dict:
        """Mean train loss and accuracy so far, and images per second."""
        seen = max(self.seen, 1)
        return {
            "train_loss": float(self.loss_sum) / seen,
            "train_acc": int(self.correct) / seen,
            "images_per_s": self.seen / self.train_time if self.train_time > 0 else float("nan"),
        }

    def to_checkpoint(self) -> dict:
        """Plain Python values (the sums exactly: float64 -> float, int64 -> int)."""
        return {
            "start_rng": self.start_rng,
            "batches": self.batches,
            "loss_sum": float(self.loss_sum),
            "correct": int(self.correct),
            "seen": self.seen,
            "train_time": self.train_time,
        }

    @classmethod
    def from_checkpoint(cls, d: dict, device: torch.device) -> EpochState:
        return cls(
            d["start_rng"],
            torch.tensor(d["loss_sum"], dtype=torch.float64, device=device),
            torch.tensor(d["correct"], dtype=torch.int64, device=device),
            d["batches"],
            d["seen"],
            d["train_time"],
        )


class Trainer:
    """Train a classifier with an SGD :class:`~revlib.harness.train.Recipe`; resume exactly.

    Args:
        model: an ``nn.Module`` mapping images to class logits.
        recipe: a Recipe or the name of one in ``RECIPES``. Its
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
        decay_filter, lr_scale: see :func:`~revlib.harness.train.parameter_groups`.
        progress: show a tqdm bar with loss, accuracy and images/s.
        metrics_path: ``.json`` or ``.csv`` file rewritten after every epoch.
        checkpoint_path: where :meth:`save` writes; also written after every epoch
            if ``checkpoint_every_epoch``, and every ``checkpoint_every`` steps.
        eval_every: evaluate on the test loader every this many epochs (and at the end).
        log_every: steps between progress-bar updates (each costs a device sync).
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe | str = "revnet",
        *,
        device: torch.device | str | None = None,
        amp: Amp = None,
        channels_last: bool = False,
        compile: bool = False,
        extra_loss: Callable[[nn.Module], Tensor] | None = None,
        decay_filter: DecayFilter | None = None,
        lr_scale: LrScale | None = None,
        progress: bool = True,
        metrics_path: str | os.PathLike | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        checkpoint_every_epoch: bool = True,
        eval_every: int = 1,
        log_every: int = 10,
    ) -> None:
        self.recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
        self.device = torch.device(device) if device is not None else default_device()
        self.amp = _resolve_amp(amp, self.device)
        self.channels_last = channels_last
        self.model = (
            model.to(self.device).to(memory_format=torch.channels_last)
            if channels_last
            else model.to(self.device)
        )
        # torch.compile returns a callable with the module's behaviour; evaluate() takes it as one
        self.forward: nn.Module = torch.compile(self.model) if compile else self.model  # type: ignore[assignment]
        self.compiled = compile
        if extra_loss is None and self.recipe.smoothness > 0:
            extra_loss = smoothness_hook(self.recipe.smoothness)
        self.extra_loss = extra_loss
        self.optimizer = torch.optim.SGD(
            parameter_groups(self.model, self.recipe.weight_decay, decay_filter, lr_scale),
            lr=self.recipe.lr,
            momentum=self.recipe.momentum,
        )
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
        self._epoch: EpochState | None = None  # the epoch in progress
        self._batches: Iterator | None = (
            None  # its iterator; None after a resume until fit() rebuilds it
        )
        self._resume_rng: dict | None = (
            None  # the random state at the checkpoint, put back by fit()
        )
        self._loader: Iterable | None = (
            None  # the train loader of the last fit, whose generators a checkpoint saves
        )

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything a resume needs, in types that ``torch.load(weights_only=True)`` accepts."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "recipe": self.recipe.to_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "history": self.history,
            "elapsed": self.elapsed,
            "epoch_in_progress": self._epoch.to_checkpoint() if self._epoch is not None else None,
            "rng": rng_snapshot(self._loader) if self._loader is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a revlib.harness.train checkpoint")
        if state["recipe"] != self.recipe.to_dict():
            warnings.warn(
                f"the checkpoint's recipe {state['recipe']} differs from this trainer's "
                f"{self.recipe.to_dict()}",
                stacklevel=2,
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.history = list(state["history"])
        self.elapsed = state["elapsed"]
        saved_epoch = state["epoch_in_progress"]
        self._epoch = (
            EpochState.from_checkpoint(saved_epoch, self.device)
            if saved_epoch is not None
            else None
        )
        self._batches = None
        self._resume_rng = state["rng"]

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write a checkpoint atomically (to ``path`` or ``checkpoint_path``)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: pass one, or set checkpoint_path")
        return atomic_save(self.state_dict(), path)

    def resume(self, path: str | os.PathLike | None = None) -> Trainer:
        """Load a checkpoint; the next :meth:`fit` continues exactly where it was written."""
        path = Path(path) if path is not None else self.checkpoint_path
        # on the CPU: RNG states must stay CPU tensors; load_state_dict moves weights and
        # momenta to the device
        if path is None:
            raise ValueError("Trainer.resume: no path given and no checkpoint_path set")
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
    def _restore_position(self, loader: Iterable) -> None:
        """After a resume: rebuild the epoch's iterator (replay its start, skip the batches
        done), restore the RNG."""
        if self._epoch is not None and self._batches is None:
            restore_rng(self._epoch.start_rng, loader)
            self._batches = iter(loader)
            for _ in range(self._epoch.batches):
                next(self._batches)
        if self._resume_rng is not None:
            restore_rng(self._resume_rng, loader)
            self._resume_rng = None

    def _start_epoch(self, loader: Iterable) -> None:
        self._epoch = EpochState.start(loader, self.device)
        self._batches = iter(loader)

    def _train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        lr = self.recipe.lr_at(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        x, y = _to(x, self.device, self.channels_last), y.to(self.device, non_blocking=True)
        with _autocast(self.device, self.amp):
            out = self.forward(x)
        loss = nn.functional.cross_entropy(out.float(), y)
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

    def _end_epoch(self, test_loader: Iterable | None, bar: Any) -> None:
        e = self._epoch
        assert e is not None  # an epoch is in progress
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            "step": self.step,
            "lr": self.recipe.lr_at(self.step - 1),
            **e.metrics(),
            "epoch_time_s": e.train_time,
        }
        t = time.perf_counter()
        if test_loader is not None and (self.epoch % self.eval_every == 0 or self.done):
            r = evaluate(self.forward, test_loader, self.device, self.amp, self.channels_last)
            row.update(test_loss=r["loss"], test_acc=r["acc"])
        self.elapsed += time.perf_counter() - t
        row["elapsed_s"] = self.elapsed
        self.history.append(row)
        self._epoch, self._batches = None, None
        if bar is not None:
            msg = f"epoch {self.epoch}: train acc {row['train_acc']:.3f}"
            if "test_acc" in row:
                msg += f", test acc {row['test_acc']:.3f}"
            bar.write(msg)
        if self.metrics_path is not None:
            write_metrics(self.history, self.metrics_path)
        if self.checkpoint_path is not None and self.checkpoint_every_epoch:
            self.save()

    def fit(
        self,
        train_loader: Iterable,
        test_loader: Iterable | None = None,
        *,
        stop_at: int | None = None,
    ) -> list[dict]:
        """Train until ``recipe.iterations`` updates (or until step ``stop_at``); the history.

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
        end = (
            self.recipe.iterations if stop_at is None else min(int(stop_at), self.recipe.iterations)
        )
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
        if steps_per_epoch == 0:
            raise ValueError("the train loader is empty")
        self.model.train()
        self._loader = train_loader
        self._restore_position(train_loader)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.recipe.iterations,
                initial=self.step,
                desc="train",
                unit="it",
                dynamic_ncols=True,
            )
        try:
            while self.step < end:
                if self._epoch is None:
                    self._start_epoch(train_loader)
                e = self._epoch
                assert e is not None and self._batches is not None  # _start_epoch made them
                t0 = time.perf_counter()
                x, y = next(self._batches)
                e.add(*self._train_step(x, y), len(y))
                last_of_epoch = e.batches == steps_per_epoch or self.done
                show = bar is not None and (self.step % self.log_every == 0 or last_of_epoch)
                if show or last_of_epoch or self.step >= end:
                    synchronize(self.device)  # one device sync per log_every steps
                dt = time.perf_counter() - t0
                e.train_time += dt
                self.elapsed += dt
                if bar is not None:
                    bar.update(1)
                    if show:
                        m = e.metrics()
                        bar.set_postfix(
                            epoch=self.epoch + 1,
                            loss=f"{m['train_loss']:.3f}",
                            acc=f"{m['train_acc']:.3f}",
                            img_s=f"{m['images_per_s']:.0f}",
                            refresh=False,
                        )
                if last_of_epoch:
                    self._end_epoch(test_loader, bar)
                elif (
                    self.checkpoint_path is not None
                    and self.checkpoint_every
                    and self.step % self.checkpoint_every == 0
                ):
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
