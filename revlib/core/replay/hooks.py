"""Module hooks inside a sub-function: replayed when they are part of its function.

A forward hook or pre-hook inside F runs once per step, as in autograd mode,
unless it is part of the function: it returned a value (a new input or
output), set a tensor attribute of its module (the hook-based
``torch.nn.utils.weight_norm`` and ``spectral_norm`` compute ``module.weight``
so), or changed its module's output in place. Such a hook runs again in the
replay: the very hook the forward ran, even if it was removed or replaced
since. A hook that only observes does not run again; one that keeps what
would carry a gradient in autograd mode (its module's output, or a value
computed from it without ``detach``) keeps a tensor without a graph, which the
engine refuses (:meth:`HookRecord.kept_outputs`). Global hooks
(``register_module_forward_hook``) are recorded alike, except that those set
at the replay also observe it (a global hook sees every evaluation).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.modules.module as _torch_module
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .calls import submodules
from .reaches import function_state, snapshot
from .swap import Slot, swapped

__all__ = ["HookRecord", "HookWatch"]

_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks")
_KWARGS_SETS = {
    "_forward_pre_hooks": "_forward_pre_hooks_with_kwargs",
    "_forward_hooks": "_forward_hooks_with_kwargs",
}
_GLOBAL_DICTS = ("_global_forward_pre_hooks", "_global_forward_hooks")
_GLOBAL_KWARGS = {"_global_forward_hooks": "_global_forward_hooks_with_kwargs"}
_POST = ("_forward_hooks", "_global_forward_hooks")
_GLOBAL = 0  # the "module id" of torch's global hooks in a HookKey
HookKey = tuple[int, str, int]  # (id of the module, which hook dict, the hook's handle id)


def _global_hooks() -> list[str]:
    """The global hook dictionaries that hold hooks now."""
    return [which for which in _GLOBAL_DICTS if getattr(_torch_module, which)]


@dataclass
class HookRecord:
    """The hooks inside ``fn`` that were part of its function in the recorded call (``acting``:
    each hook as it was called, and whether it took keyword arguments), and what observing
    forward hooks saw (``kept``)."""

    fn: Any
    acting: dict[HookKey, tuple[Callable[..., Any], bool]] = field(default_factory=dict)
    kept: list[tuple[str, tuple[int, ...], weakref.ref[Tensor]]] = field(default_factory=list)
    states: dict[HookKey, list[tuple[Slot, Any]]] = field(default_factory=dict)
    """Per acting call (keyed by the module it fired on): the state its hook read then."""

    def replay(self) -> contextlib.AbstractContextManager[None]:
        """Exactly the hooks that acted, as they were then, each seeing the state it read then
        (observers ran once, in the forward)."""
        return _replaying_hooks(self.fn, self.acting, self.states)

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

    def __init__(
        self,
        fn: Callable[..., Any],
        x: Tensor,
        names: dict[int, str],
        kwargs: dict[str, Any] | None = None,
    ) -> None:
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
    for which in _global_hooks():
        hooks = getattr(_torch_module, which)
        kwargs_keys = getattr(_torch_module, _GLOBAL_KWARGS.get(which, ""), {})
        wrapped = type(hooks)(
            (k, _logged(None, which, k, h, k in kwargs_keys, log, names)) for k, h in hooks.items()
        )
        slots.append((Slot.item(vars(_torch_module), which), wrapped))
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
    if which not in _POST:
        return None
    return args[2] if len(args) > 2 else kwargs.get("output", args[-1] if args else None)


def _logged(
    hooked: nn.Module | None,
    which: str,
    key: int,
    hook: Callable[..., Any],
    with_kwargs: bool,
    log: HookRecord,
    names: dict[int, str],
) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        m = hooked if hooked is not None else args[0]  # a global hook: the module it fires on
        out = _output_of(which, args, kwargs)
        version = out._version if isinstance(out, Tensor) else None
        attributes = _tensor_attributes(m)
        inputs = args[1] if len(args) > 1 and isinstance(args[1], tuple) else ()
        seen = [t for t in (out, *inputs) if isinstance(t, Tensor)]
        state = function_state(hook)  # what it reads now: a counter, a flag
        with _Created([*seen, *m.parameters(recurse=False)]) as created:
            result = hook(*args, **kwargs)
        acted = (
            result is not None
            or _tensor_attributes(m) != attributes
            or (isinstance(out, Tensor) and out._version != version)
        )
        if acted:
            log.acting[(id(hooked) if hooked is not None else _GLOBAL, which, key)] = (
                hook,
                with_kwargs,
            )
            log.states[(id(m), which, key)] = state
        else:  # what an observer could keep: the module's output and inputs, what it computed
            name = names.get(id(m), type(m).__name__)
            for t in [*seen, *created.tensors]:
                log.kept.append((name, tuple(t.shape), weakref.ref(t)))
        return result

    return call


class _Created(TorchFunctionMode):
    """Weak references to the tensors that torch functions compute inside the body from ``live``
    ones (a module's output, inputs and parameters) with grad mode on and no ``detach``: those
    that would require grad in mode ``"autograd"``. A detached copy kept for inspection is not
    one of them."""

    def __init__(self, live: Iterable[Tensor]) -> None:
        super().__init__()
        self.live = {id(t) for t in live}
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
        if func in _DETACHING or not torch.is_grad_enabled():
            return out
        if any(isinstance(t, Tensor) and id(t) in self.live for t in tree_leaves((args, kwargs))):
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, Tensor):
                    self.live.add(id(t))
                    self.refs.append(weakref.ref(t))
        return out


# reading ``.data`` reaches torch functions as the getter of Tensor's "data" descriptor
_DETACHING = frozenset(
    {Tensor.detach, Tensor.detach_, torch.detach, vars(torch._C.TensorBase)["data"].__get__}
)


def _observing(hook: Callable[..., Any]) -> Callable[..., None]:
    """``hook``, called for what it sees; what it returns is dropped."""

    def call(*args: Any, **kwargs: Any) -> None:
        hook(*args, **kwargs)

    return call


def _as_then(
    hook: Callable[..., Any], which: str, key: int, states: dict[HookKey, list[tuple[Slot, Any]]]
) -> Callable[..., Any]:
    """``hook``, called with the state it read when it acted on that module in the forward."""

    def call(*args: Any, **kwargs: Any) -> Any:
        state = states.get((id(args[0]), which, key), [])
        with swapped((slot, snapshot(value)) for slot, value in state):
            return hook(*args, **kwargs)

    return call


def _replaying_hooks(
    fn: Any,
    acting: dict[HookKey, tuple[Callable[..., Any], bool]],
    states: dict[HookKey, list[tuple[Slot, Any]]] | None = None,
) -> contextlib.AbstractContextManager[None]:
    """Exactly the hooks that acted in the recorded call, as they were then, and no other."""
    if not acting and not _hooked(fn) and not _global_hooks():
        return contextlib.nullcontext()  # no hook then, none now: nothing to swap
    slots = []
    for which in _GLOBAL_DICTS:
        # the global hooks that acted, as they were then; the others of now only observe (a
        # global hook sees every evaluation: it may count the replay's)
        recorded = {k: v for (i, w, k), v in acting.items() if i == _GLOBAL and w == which}
        hooks = getattr(_torch_module, which)
        if not hooks and not recorded:
            continue
        replayed = type(hooks)(
            (k, _as_then(h, which, k, states or {})) for k, (h, _) in recorded.items()
        )
        replayed.update((k, _observing(h)) for k, h in hooks.items() if k not in recorded)
        slots.append((Slot.item(vars(_torch_module), which), replayed))
        if which in _GLOBAL_KWARGS:
            now = getattr(_torch_module, _GLOBAL_KWARGS[which])
            kwargs_keys = {k: True for k, (_, kw) in recorded.items() if kw}
            kwargs_keys.update((k, True) for k in now if k not in recorded)
            slots.append((Slot.item(vars(_torch_module), _GLOBAL_KWARGS[which]), kwargs_keys))
    for m in submodules(fn) if isinstance(fn, nn.Module) else []:
        for which in _HOOK_DICTS:
            recorded = {k: v for (i, w, k), v in acting.items() if i == id(m) and w == which}
            hooks = getattr(m, which)
            if not hooks and not recorded:
                continue
            replayed_here = (
                (k, _as_then(h, which, k, states or {})) for k, (h, _) in recorded.items()
            )
            slots.append((Slot.attribute(m, which), type(hooks)(replayed_here)))
            slots.append(
                (
                    Slot.attribute(m, _KWARGS_SETS[which]),
                    {k: True for k, (_, kw) in recorded.items() if kw},
                )
            )
    return swapped(slots)
