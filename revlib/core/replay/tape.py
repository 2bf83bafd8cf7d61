"""The tape: one block's sub-function calls, recorded so that a second run computes the same.

A reversible backward runs every sub-function (F, G, ...) a second time. The
second run must compute the very function the first run computed, or the
reconstruction and the gradients are silently wrong (chapter 3 of the book).
:meth:`Tape.record` makes the first call with every kind of state watched
(:data:`WATCHES`) and keeps, per call, the records of those the call needs
replayed; :meth:`Tape.replay` makes the second call with those records, the
autocast state of the forward, and normalisation statistics left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch.nn.modules.module as _global_hooks
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from .buffers import BufferCopies, BufferWatch, norm_stats_not_updated
from .calls import keywords_for, submodules
from .hooks import HookRecord, HookWatch
from .host import HostWatch
from .protocol import Record, Watch
from .rng import AutocastState, RNGWatch

__all__ = ["PLAIN_LAYERS", "WATCHES", "Tape", "records_nothing"]

WATCHES: tuple[type[Watch], ...] = (RNGWatch, HostWatch, BufferWatch, HookWatch)
"""Every kind of state a recorded call is watched for, in the order its records are replayed."""
_RANDOM_KINDS = (RNGWatch, HostWatch)  # skipped when the user opts out of RNG bookkeeping
_NOT_RANDOM = tuple(k for k in WATCHES if k not in _RANDOM_KINDS)


PLAIN_LAYERS: frozenset[type[nn.Module]] = frozenset(
    (
        nn.Sequential, nn.Identity, nn.Flatten, nn.Unflatten, nn.Linear,
        nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
        nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm,
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
        nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
        nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
        nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
        nn.ReplicationPad1d, nn.ReplicationPad2d, nn.Upsample, nn.PixelShuffle,
    )
)  # fmt: skip
"""torch layers (these exact classes; a subclass may do anything) whose call draws no random
number, reaches no host state and changes no buffer but normalisation statistics."""


def records_nothing(module: nn.Module) -> bool:
    """True if a recorded call of any sub-function inside ``module`` keeps no record: every module
    below it is one of :data:`PLAIN_LAYERS`, none has a hook, and no global module hook is set.

    Then every :data:`WATCHES` kind would come back empty, so a recording may be skipped (the
    engine's tapeless and compiled whole-block forwards). ``module`` itself (the block) is not a
    sub-function and is not checked.
    """
    if _global_hooks._global_forward_hooks or _global_hooks._global_forward_pre_hooks:
        return False
    return all(
        type(m) in PLAIN_LAYERS and not (m._forward_hooks or m._forward_pre_hooks)
        for m in submodules(module)[1:]
    )


@dataclass
class Tape:
    """Everything one block's forward records so that a later recomputation matches it.

    ``records`` maps the name of a sub-function call (``"F"``, ``"G"``) to the
    records its call left; for a deterministic, stateless, hookless function
    there are none. ``record_rng=False`` skips the random and host state (the
    user's opt-out). ``extras`` are the chain's extra arguments (conditioning,
    masks): every sub-function receives those it takes by name, in the forward
    and in the replay (where the engine swaps in detached leaves, to
    differentiate). ``call`` wraps each sub-function before it is called (the
    engine's compiled version, :mod:`~revlib.core.compiled`).
    """

    autocast: AutocastState
    record_rng: bool
    records: dict[str, list[Record]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    used_extras: set[str] = field(default_factory=set)
    names: dict[int, str] = field(default_factory=dict)
    call: Callable[[Callable[..., Tensor]], Callable[..., Tensor]] | None = None

    @classmethod
    def start(
        cls, x: Tensor, record_rng: bool = True, extras: dict[str, Any] | None = None
    ) -> Tape:
        """A tape for a forward pass on ``x`` in the current autocast state."""
        return cls(AutocastState.capture(x.device.type), record_rng, extras=dict(extras or {}))

    def _callable(self, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        return fn if self.call is None else self.call(fn)

    def record(self, name: str, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """First run of ``fn(x)``, keeping what a second run must replay."""
        kinds = WATCHES if self.record_rng else _NOT_RANDOM
        kwargs = keywords_for(fn, self.extras, self.used_extras)
        watches = [kind(fn, x, self.names, kwargs) for kind in kinds]
        with contextlib.ExitStack() as stack:
            for w in watches:
                stack.enter_context(w)
            out = self._callable(fn)(x, **kwargs)
        records = [r for w in watches if (r := w.record()) is not None]
        if records:
            self.records[name] = records
        return out

    def replay(self, name: str, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """Second run of ``fn(x)``: what the first run saw, and no state updated."""
        with contextlib.ExitStack() as stack:
            for record in self.records.get(name, ()):
                stack.enter_context(record.replay())
            stack.enter_context(self.autocast.context())
            if isinstance(fn, nn.Module):
                stack.enter_context(norm_stats_not_updated(fn))
                if not any(isinstance(r, HookRecord) for r in self.records.get(name, ())):
                    stack.enter_context(HookRecord(fn).replay())  # hooks added since: not run
            return self._callable(fn)(x, **keywords_for(fn, self.extras))

    def recorded(self, kind: type) -> dict[str, Any]:
        """``{call name: its record of this kind}`` (e.g. ``tape.recorded(RNGState)``)."""
        return {
            name: r
            for name, records in self.records.items()
            for r in records
            if isinstance(r, kind)
        }

    def hook_records(self) -> list[HookRecord]:
        return list(self.recorded(HookRecord).values())

    def replayed_buffers(self) -> set[tuple[int, str]]:
        """``(id(module), name)`` of every buffer a replay reads from its copy, not the module."""
        return {key for r in self.recorded(BufferCopies).values() for key in r.buffers()}

    def grad_targets(self, fn: nn.Module) -> list[Tensor]:
        """What a backward step differentiates a call of ``fn`` with respect to, besides its input.

        ``fn``'s trainable parameters and the tensors among the extra arguments it
        takes that require gradients (conditioning tensors, also inside containers).
        """
        distinct: dict[int, Tensor] = {
            id(p): p
            for m in submodules(fn)
            for p in m._parameters.values()
            if p is not None and p.requires_grad
        }
        params = list(distinct.values())
        if not self.extras:
            return params
        leaves = tree_leaves(keywords_for(fn, self.extras))  # also inside lists, tuples, dicts
        return params + [v for v in leaves if isinstance(v, Tensor) and v.requires_grad]

    def tensors(self) -> list[Tensor]:
        """The tensors the records keep (generator states, buffer copies), in a fixed order."""
        return [t for records in self.records.values() for r in records for t in r.tensors()]

    def with_tensors(self, tensors: Iterator[Tensor]) -> Tape:
        """This tape with :meth:`tensors` replaced, in order, by ``tensors`` (as unpacked by
        autograd)."""
        records = {name: [r.with_tensors(tensors) for r in rs] for name, rs in self.records.items()}
        return replace(self, records=records)
