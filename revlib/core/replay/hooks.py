"""Module hooks inside a sub-function: replayed when they are part of its function.

A forward hook or pre-hook inside F runs once per step, as in autograd mode,
unless it is part of the function: it returned a value (a new input or
output), set a tensor attribute of its module (the hook-based
``torch.nn.utils.weight_norm`` and ``spectral_norm`` compute ``module.weight``
so), or changed its module's output in place. Such a hook runs again in the
replay: the very hook the forward ran, even if it was removed or replaced
since. A hook that only observes does not run again; one that keeps its
module's output (for a loss) keeps a tensor without a graph, which the engine
refuses (:meth:`HookRecord.kept_outputs`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .calls import submodules
from .swap import Slot, swapped

__all__ = ["HookRecord", "HookWatch"]

_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks")
_KWARGS_SETS = {
    "_forward_pre_hooks": "_forward_pre_hooks_with_kwargs",
    "_forward_hooks": "_forward_hooks_with_kwargs",
}
HookKey = tuple[int, str, int]  # (id of the module, which hook dict, the hook's handle id)


@dataclass
class HookRecord:
    """The hooks inside ``fn`` that were part of its function in the recorded call (``acting``:
    each hook as it was called, and whether it took keyword arguments), and what observing
    forward hooks saw (``kept``)."""

    fn: Any
    acting: dict[HookKey, tuple[Callable[..., Any], bool]] = field(default_factory=dict)
    kept: list[tuple[str, tuple[int, ...], weakref.ref[Tensor]]] = field(default_factory=list)

    def replay(self) -> contextlib.AbstractContextManager[None]:
        """Exactly the hooks that acted, as they were then (observers ran once, in the
        forward)."""
        return _replaying_hooks(self.fn, self.acting)

    def tensors(self) -> list[Tensor]:
        return []

    def with_tensors(self, tensors: Iterator[Tensor]) -> HookRecord:
        return self

    def kept_outputs(self, keep: Tensor | None = None) -> list[tuple[str, tuple[int, ...]]]:
        """``(module name, shape)`` of each output an observing hook kept alive past the call
        (``keep``, the block's own output, excepted); forgets them."""
        out = [(n, s) for n, s, ref in self.kept if (t := ref()) is not None and t is not keep]
        self.kept.clear()
        return out


class HookWatch:
    """The :class:`~revlib.core.replay.protocol.Watch` of the hooks inside a module ``fn``."""

    def __init__(self, fn: Callable[..., Any], x: Tensor, names: dict[int, str]) -> None:
        self.log = HookRecord(fn)
        self.recording = _recording_hooks(fn, self.log, names)

    def __enter__(self) -> HookWatch:
        self.recording.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.recording.__exit__(None, None, None)

    def record(self) -> HookRecord | None:
        # none: the tape's replay still removes every hook (none acted)
        return self.log if self.log.acting or self.log.kept else None


def _hooked(fn: Any) -> list[nn.Module]:
    if not isinstance(fn, nn.Module):
        return []
    return [m for m in submodules(fn) if m._forward_hooks or m._forward_pre_hooks]


def _tensor_attributes(m: nn.Module) -> dict[str, int]:
    return {k: id(v) for k, v in vars(m).items() if isinstance(v, Tensor)}


def _recording_hooks(
    fn: Any, log: HookRecord, names: dict[int, str]
) -> contextlib.AbstractContextManager[None]:
    """The hooks inside ``fn`` wrapped, noting in ``log`` which acted and what observers saw."""
    slots = []
    for m in _hooked(fn):
        for which in _HOOK_DICTS:
            hooks = getattr(m, which)
            if hooks:
                kwargs_keys = getattr(m, _KWARGS_SETS[which])
                wrapped = type(hooks)(
                    (k, _logged(m, which, k, h, k in kwargs_keys, log, names))
                    for k, h in hooks.items()
                )
                slots.append((Slot.attribute(m, which), wrapped))
    return swapped(slots)


def _output_of(which: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if which != "_forward_hooks":
        return None
    return args[2] if len(args) > 2 else kwargs.get("output", args[-1] if args else None)


def _logged(
    m: nn.Module,
    which: str,
    key: int,
    hook: Callable[..., Any],
    with_kwargs: bool,
    log: HookRecord,
    names: dict[int, str],
) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        out = _output_of(which, args, kwargs)
        version = out._version if isinstance(out, Tensor) else None
        attributes = _tensor_attributes(m)
        with _Created() as created:
            result = hook(*args, **kwargs)
        acted = (
            result is not None
            or _tensor_attributes(m) != attributes
            or (isinstance(out, Tensor) and out._version != version)
        )
        if acted:
            log.acting[(id(m), which, key)] = (hook, with_kwargs)
        else:  # what an observer could keep: the module's output and inputs, what it computed
            inputs = args[1] if len(args) > 1 and isinstance(args[1], tuple) else ()
            seen = [out, *inputs] if isinstance(out, Tensor) else list(inputs)
            name = names.get(id(m), type(m).__name__)
            for t in [*seen, *created.tensors]:
                if isinstance(t, Tensor):
                    log.kept.append((name, tuple(t.shape), weakref.ref(t)))
        return result

    return call


class _Created(TorchFunctionMode):
    """Weak references to the tensors torch functions return inside the body."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[weakref.ref[Tensor]] = []

    @property
    def tensors(self) -> list[Tensor]:
        return [t for ref in self.refs if (t := ref()) is not None]

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Collection[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, Tensor):
                self.refs.append(weakref.ref(t))
        return out


def _replaying_hooks(
    fn: Any, acting: dict[HookKey, tuple[Callable[..., Any], bool]]
) -> contextlib.AbstractContextManager[None]:
    """Exactly the hooks that acted in the recorded call, as they were then, and no other."""
    if not acting and not _hooked(fn):
        return contextlib.nullcontext()  # no hook then, none now: nothing to swap
    slots = []
    for m in submodules(fn) if isinstance(fn, nn.Module) else []:
        for which in _HOOK_DICTS:
            recorded = {k: v for (i, w, k), v in acting.items() if i == id(m) and w == which}
            hooks = getattr(m, which)
            if not hooks and not recorded:
                continue
            slots.append(
                (Slot.attribute(m, which), type(hooks)((k, h) for k, (h, _) in recorded.items()))
            )
            slots.append(
                (
                    Slot.attribute(m, _KWARGS_SETS[which]),
                    {k: True for k, (_, kw) in recorded.items() if kw},
                )
            )
    return swapped(slots)
