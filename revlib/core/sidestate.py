"""What a sub-function call changes besides torch's default generators and its registered buffers.

A recomputation must see what the forward saw (:mod:`~revlib.core.recompute`).
Code ported from elsewhere reaches state that torch's own bookkeeping does not
cover; this module records it around a recorded call and replays it:

* **host random generators**: Python's :mod:`random`, NumPy's global
  generator, and ``torch.Generator`` objects held as module attributes (DropPath
  implementations use all three). A call that drew from one is replayed from
  the state before the call, and the generator is put back afterwards;
* **Python attributes** of the sub-function's modules (a step counter, a
  flag): an ``int``, ``float``, ``bool`` or ``str`` attribute that the call
  changed is set back to its value before the call for the replay, then to
  the forward's value again;
* **module hooks** inside the sub-function: a forward hook or pre-hook runs
  once per step, as in autograd mode, unless it is part of the function: it
  returned a value (a new input or output), set a tensor attribute of its
  module (the hook-based ``torch.nn.utils.weight_norm`` and ``spectral_norm``
  compute ``module.weight`` so), or changed its module's output in place.
  Such a hook runs again in the replay, the very hook the forward ran even
  if it was removed or replaced since; a hook that only observes does not.
  An observing forward hook that keeps its module's output (to build an
  auxiliary loss on it) would keep a tensor without a graph: the block
  raises instead (:func:`check_no_kept_outputs`).
"""

from __future__ import annotations

import contextlib
import random
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .recompute import submodules

__all__ = [
    "HostState",
    "HostChanges",
    "HookLog",
    "recording_hooks",
    "replaying_hooks",
    "check_no_kept_outputs",
]

_SCALARS = (int, float, bool, str)


class _NumpyRandom(Protocol):
    """What this module uses of ``numpy.random`` (the global generator's state)."""

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> Any: ...


def _numpy_random() -> _NumpyRandom | None:
    """NumPy's global generator module if NumPy is imported (the core does not import it)."""
    np = sys.modules.get("numpy")
    return getattr(np, "random", None) if np is not None else None


def _own_state(m: nn.Module) -> bool:
    """False for torch's own layers (``torch.nn.modules``), whose forward changes no attribute and
    draws no host RNG."""
    return not type(m).__module__.startswith("torch.nn.modules.")


def _generators(modules: list[nn.Module]) -> list[tuple[nn.Module, str, torch.Generator]]:
    # type() rather than isinstance: torch.Generator's metaclass makes isinstance slow, and this
    # runs per call
    return [
        (m, k, v)
        for m in modules
        if _own_state(m)
        for k, v in vars(m).items()
        if type(v) is torch.Generator
    ]


def _attributes(modules: list[nn.Module]) -> dict[tuple[int, str], Any]:
    return {
        (i, k): v
        for i, m in enumerate(modules)
        if _own_state(m)
        for k, v in vars(m).items()
        if type(v) in _SCALARS and not k.startswith("_")
    }


@dataclass
class HostState:
    """The host generators' states and the modules' scalar attributes, before a call."""

    modules: list[nn.Module]
    python: Any
    numpy: Any
    generators: list[tuple[nn.Module, str, torch.Generator, Tensor]]
    attributes: dict[tuple[int, str], Any]

    @classmethod
    def capture(cls, fn: Any) -> HostState:
        modules = submodules(fn) if isinstance(fn, nn.Module) else []
        np_random = _numpy_random()
        return cls(
            modules,
            random.getstate(),
            np_random.get_state() if np_random is not None else None,
            [(m, k, g, g.get_state()) for m, k, g in _generators(modules)],
            _attributes(modules),
        )

    def changes(self) -> HostChanges | None:
        """What the call changed since :meth:`capture` (``None`` for nothing)."""
        out = HostChanges()
        if random.getstate() != self.python:
            out.python = self.python
        np_random = _numpy_random()
        if (
            self.numpy is not None
            and np_random is not None
            and not _same_numpy_state(np_random.get_state(), self.numpy)
        ):
            out.numpy = self.numpy
        out.generators = [
            (g, state)
            for _, _, g, state in self.generators
            if not torch.equal(g.get_state(), state)
        ]
        now = _attributes(self.modules)
        out.attributes = [
            (self.modules[i], k, before, now.get((i, k)))
            for (i, k), before in self.attributes.items()
            if now.get((i, k), before) != before
        ]
        return out if out else None


def _same_numpy_state(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return a[0] == b[0] and a[2:] == b[2:] and (a[1] == b[1]).all()


@dataclass
class HostChanges:
    """The states before a recorded call of the host generators and attributes that the call
    changed."""

    python: Any = None
    numpy: Any = None
    generators: list[tuple[torch.Generator, Tensor]] = field(default_factory=list)
    attributes: list[tuple[nn.Module, str, Any, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return (
            self.python is not None
            or self.numpy is not None
            or bool(self.generators)
            or bool(self.attributes)
        )

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body from the states before the call; put back the states of now afterwards."""
        np_random = _numpy_random() if self.numpy is not None else None
        now_python = random.getstate() if self.python is not None else None
        now_numpy = np_random.get_state() if np_random is not None else None
        now_generators = [(g, g.get_state()) for g, _ in self.generators]
        now_attributes = [(m, k, getattr(m, k)) for m, k, _, _ in self.attributes]
        if self.python is not None:
            random.setstate(self.python)
        if np_random is not None:
            np_random.set_state(self.numpy)
        for g, state in self.generators:
            g.set_state(state)
        for m, k, before, _ in self.attributes:
            object.__setattr__(m, k, before)
        try:
            yield
        finally:
            if now_python is not None:
                random.setstate(now_python)
            if np_random is not None:
                np_random.set_state(now_numpy)
            for g, state in now_generators:
                g.set_state(state)
            for m, k, value in now_attributes:
                object.__setattr__(m, k, value)


_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks")
_KWARGS_SETS = {
    "_forward_pre_hooks": "_forward_pre_hooks_with_kwargs",
    "_forward_hooks": "_forward_hooks_with_kwargs",
}
HookKey = tuple[int, str, int]  # (id of the module, which hook dict, the hook's handle id)


@dataclass
class HookLog:
    """The module hooks inside a sub-function that are part of its function in the recorded call
    (``acting``: each hook as it was called, and whether it took keyword arguments), and what
    observing forward hooks saw (``kept``)."""

    acting: dict[HookKey, tuple[Callable[..., Any], bool]] = field(default_factory=dict)
    kept: list[tuple[str, tuple[int, ...], weakref.ref[Tensor]]] = field(default_factory=list)


def _hooked(fn: Any) -> list[nn.Module]:
    if not isinstance(fn, nn.Module):
        return []
    return [m for m in submodules(fn) if m._forward_hooks or m._forward_pre_hooks]


def _tensor_attributes(m: nn.Module) -> dict[str, int]:
    return {k: id(v) for k, v in vars(m).items() if isinstance(v, Tensor)}


@contextlib.contextmanager
def recording_hooks(fn: Any, log: HookLog, names: dict[int, str]) -> Iterator[None]:
    """Run the body with the hooks inside ``fn`` wrapped, noting in ``log`` which acted and what
    observers saw."""
    modules = _hooked(fn)
    saved = []
    for m in modules:
        for which in _HOOK_DICTS:
            hooks = getattr(m, which)
            if hooks:
                saved.append((m, which, hooks))
                kwargs_keys = getattr(m, _KWARGS_SETS[which])
                setattr(
                    m,
                    which,
                    type(hooks)(
                        (k, _logged(m, which, k, h, k in kwargs_keys, log, names))
                        for k, h in hooks.items()
                    ),
                )
    try:
        yield
    finally:
        for m, which, hooks in saved:
            setattr(m, which, hooks)


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
    log: HookLog,
    names: dict[int, str],
) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        out = _output_of(which, args, kwargs)
        version = out._version if isinstance(out, Tensor) else None
        attributes = _tensor_attributes(m)
        result = hook(*args, **kwargs)
        acted = (
            result is not None
            or _tensor_attributes(m) != attributes
            or (isinstance(out, Tensor) and out._version != version)
        )
        if acted:
            log.acting[(id(m), which, key)] = (hook, with_kwargs)
        elif isinstance(out, Tensor):
            log.kept.append(
                (names.get(id(m), type(m).__name__), tuple(out.shape), weakref.ref(out))
            )
        return result

    return call


@contextlib.contextmanager
def replaying_hooks(fn: Any, log: HookLog | None) -> Iterator[None]:
    """Run the body with exactly the hooks that acted in the recorded call, as they were then
    (observers ran once, in the forward)."""
    acting = log.acting if log is not None else {}
    modules = submodules(fn) if isinstance(fn, nn.Module) else []
    saved = []
    for m in modules:
        for which in _HOOK_DICTS:
            recorded = {k: v for (i, w, k), v in acting.items() if i == id(m) and w == which}
            hooks = getattr(m, which)
            if not hooks and not recorded:
                continue
            kwargs_name = _KWARGS_SETS[which]
            kwargs_keys = getattr(m, kwargs_name)
            saved.append((m, which, hooks, kwargs_name, kwargs_keys))
            setattr(m, which, type(hooks)((k, h) for k, (h, _) in recorded.items()))
            setattr(m, kwargs_name, {k: True for k, (_, kw) in recorded.items() if kw})
    try:
        yield
    finally:
        for m, which, hooks, kwargs_name, kwargs_keys in saved:
            setattr(m, which, hooks)
            setattr(m, kwargs_name, kwargs_keys)


def check_no_kept_outputs(log: HookLog, owner: str, keep: Tensor | None = None) -> None:
    """Raise if an observing forward hook kept its module's output alive past the block's forward.

    In mode ``"reversible"`` the forward builds no graph, so a loss built on
    such a tensor would silently get no gradient.
    """
    for name, shape, ref in log.kept:
        out = ref()
        if out is not None and out is not keep:
            raise RuntimeError(
                f"{owner}: a forward hook on {name} kept its output (shape {shape}) after the "
                "block's forward. In mode='reversible' the forward builds no graph, so a loss on "
                "that tensor would get no gradient. Take the activation from the block's output "
                "instead, or run this model with mode='autograd' (revlib.set_mode(model, "
                "'autograd'))."
            )
    log.kept.clear()
