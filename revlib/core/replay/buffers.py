"""Buffers: running statistics updated once per step, and any other buffer a call changes.

The running statistics of normalisation layers in training mode are not
touched by a replay (the forward updated them once). Any other buffer that a
call changed (a spectral norm's power-iteration vectors, a user's moving
average; found by identity, version counter or value) is copied before the
call, and the replay runs on that copy, so it reads what the forward read and
the module keeps the forward's update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.utils.checkpoint import checkpoint

from .calls import submodules
from .swap import Slot, swapped

__all__ = [
    "NORM_STATS",
    "BufferCopies",
    "BufferWatch",
    "checkpoint_updating_stats_once",
    "frozen_norm_stats",
    "norm_stats_not_updated",
    "updated_once_buffers",
    "updating_norm",
    "updating_norm_layers",
]

NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")
"""The buffers a normalisation layer in training mode updates in every forward."""


def updating_norm(m: nn.Module) -> TypeGuard[_NormBase]:
    return isinstance(m, _NormBase) and m.training and m.track_running_stats


def updating_norm_layers(module: nn.Module) -> list[_NormBase]:
    """The normalisation layers of ``module`` that update running statistics in a forward now."""
    return [m for m in submodules(module) if updating_norm(m)]


@contextlib.contextmanager
def frozen_norm_stats(module: nn.Module) -> Iterator[None]:
    """Run the body with the running statistics of normalisation layers left untouched, versions
    included.

    A BatchNorm layer in training mode normalises with the batch statistics
    either way. Inside this context its running statistics and
    ``num_batches_tracked`` are copies, which the body may update and which are
    then dropped; the module gets its own tensors back, with their values and
    their version counters as they were. So it saves the same tensors for
    backward as in the first run (which non-reentrant checkpointing checks),
    and another graph that saved the statistics (an ``inverse`` call, the
    module used outside the sequence) still finds them unmodified.
    """
    copies = [
        (Slot.item(m._buffers, name), b.clone())
        for m in updating_norm_layers(module)
        for name in NORM_STATS
        if (b := m._buffers.get(name)) is not None
    ]
    with swapped(copies):
        yield


@contextlib.contextmanager
def norm_stats_not_updated(fn: nn.Module) -> Iterator[None]:
    """The replay's version of :func:`frozen_norm_stats`: BatchNorm layers write nothing at all.

    A ``_BatchNorm`` in training mode with ``track_running_stats=False``
    normalises with the batch statistics, as in the forward, and passes no
    running buffers to the kernel, so nothing is written (and nothing copied).
    Other normalisation layers (InstanceNorm with running statistics) fall
    back to :func:`frozen_norm_stats`.
    """
    batch_norms, others = [], False
    for m in submodules(fn):
        if updating_norm(m):
            if isinstance(m, _BatchNorm):
                batch_norms.append(m)
            else:
                others = True
    with swapped((Slot.attribute(m, "track_running_stats"), False) for m in batch_norms):
        if others:
            with frozen_norm_stats(fn):
                yield
        else:
            yield


def updated_once_buffers(module: nn.Module) -> list[tuple[nn.Module, str, Tensor]]:
    """The buffers of ``module`` a forward may change and a recomputation must not change again.

    All buffers except the running statistics of normalisation layers in
    training mode, which :func:`frozen_norm_stats` handles without copies.
    """
    out = []
    for m in submodules(module):
        skip = NORM_STATS if updating_norm(m) else ()
        for name, b in m._buffers.items():
            if b is not None and name not in skip:
                out.append((m, name, b))
    return out


@dataclass(frozen=True)
class BufferCopies:
    """The buffers a recorded call changed, each as it was before the call: ``(module, name,
    value)``."""

    copies: tuple[tuple[nn.Module, str, Tensor], ...]

    def replay(self) -> contextlib.AbstractContextManager[object]:
        return swapped((Slot.item(m._buffers, n), b.clone()) for m, n, b in self.copies)

    def tensors(self) -> list[Tensor]:
        return [b for _, _, b in self.copies]

    def with_tensors(self, tensors: Iterator[Tensor]) -> BufferCopies:
        return replace(self, copies=tuple((m, n, next(tensors)) for m, n, _ in self.copies))

    def buffers(self) -> set[tuple[int, str]]:
        """``(id(module), name)`` of each buffer, which a replay reads from its copy."""
        return {(id(m), n) for m, n, _ in self.copies}


class BufferWatch:
    """The :class:`~revlib.core.replay.protocol.Watch` of the buffers a call of a module changes
    (except running statistics, which :func:`norm_stats_not_updated` keeps out of the replay)."""

    __slots__ = ("before",)

    def __init__(
        self,
        fn: Callable[..., Any],
        x: Tensor,
        names: dict[int, str],
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        watched = updated_once_buffers(fn) if isinstance(fn, nn.Module) else []
        self.before = [(m, n, b, b._version, b.clone()) for m, n, b in watched]

    def __enter__(self) -> BufferWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def record(self) -> BufferCopies | None:
        # changed: replaced, its version moved, or (kernels and .data writes that move no version
        # counter) its value differs from the copy
        changed = tuple(
            (m, n, copy)
            for m, n, b, version, copy in self.before
            if m._buffers.get(n) is not b or b._version != version or not _same_values(b, copy)
        )
        return BufferCopies(changed) if changed else None


def checkpoint_updating_stats_once(
    module: nn.Module, fn: Callable[[Tensor], Tensor], x: Tensor
) -> Tensor:
    """``fn(x)`` under non-reentrant :func:`torch.utils.checkpoint.checkpoint`, each buffer
    updated once.

    Plain checkpointing updates the running statistics of ``module``'s
    BatchNorm layers twice per step (forward and recomputation; PyTorch issue
    96136), and the hook-based ``spectral_norm`` steps its power iteration
    twice, so the recomputed weight is not the forward's. Here the
    recomputation runs under :func:`frozen_norm_stats`, with every other
    buffer the forward changed put back as it was before the forward
    (:class:`BufferWatch`) and the train/eval flags of the forward.
    """
    record: BufferCopies | None = None
    flags: list[tuple[Slot, bool]] = []
    calls = 0

    def run(h: Tensor) -> Tensor:
        nonlocal calls, record
        calls += 1
        if calls == 1:
            flags.extend((Slot.attribute(m, "training"), m.training) for m in submodules(module))
            watch = BufferWatch(module, h, {})
            out = fn(h)
            record = watch.record()
            return out
        # as the forward ran: its train/eval flags (model.eval() may come before the backward),
        # its buffers, and running statistics left alone
        with swapped(flags), frozen_norm_stats(module):
            with record.replay() if record else contextlib.nullcontext():
                return fn(h)

    return checkpoint(run, x, use_reentrant=False, preserve_rng_state=True)


def _same_values(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(
            torch.equal(a, b)
            or torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(), b.nan_to_num())
        )
    return bool(torch.equal(a, b))
