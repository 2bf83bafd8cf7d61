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
import itertools
import random
import sys
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .recompute import submodules

__all__ = [
    "HostGenerator",
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


def forward_reads(m: nn.Module) -> Iterator[Any]:
    """The closure cells and global names that ``m.forward``'s code (and the functions defined in
    it) reads; nothing for torch's own modules."""
    fn = getattr(m.forward, "__func__", m.forward)
    if type(m).__module__.startswith("torch.") or not hasattr(fn, "__code__"):
        return
    for cell in fn.__closure__ or ():
        try:
            yield cell.cell_contents
        except ValueError:  # an empty cell
            continue
    codes = [fn.__code__]
    while codes:
        code = codes.pop()
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        for name in code.co_names:
            if name in fn.__globals__:
                yield fn.__globals__[name]


class HostGenerator:
    """A random generator a module reaches, with its state's getter and setter: a
    ``torch.Generator``, a ``random.Random``, a NumPy ``Generator`` or ``RandomState``."""

    __slots__ = ("obj", "get", "set")

    def __init__(self, obj: Any, get: Callable[[], Any], set: Callable[[Any], Any]) -> None:
        self.obj, self.get, self.set = obj, get, set

    @staticmethod
    def of(v: Any) -> HostGenerator | None:
        # type() first: torch.Generator's metaclass makes isinstance slow, and this runs per call
        if type(v) is torch.Generator:
            return HostGenerator(v, v.get_state, v.set_state)
        if isinstance(v, random.Random):
            return HostGenerator(v, v.getstate, v.setstate)
        np = sys.modules.get("numpy")
        if np is not None:
            if isinstance(v, np.random.Generator):
                bits = v.bit_generator
                return HostGenerator(v, lambda: bits.state, lambda s: setattr(bits, "state", s))
            if isinstance(v, np.random.RandomState):
                return HostGenerator(v, v.get_state, v.set_state)
        return None


def _candidates(m: nn.Module) -> Iterator[Any]:
    """Attribute values of ``m`` and what its forward reads from closures and globals, with the
    items of those that are lists, tuples or dicts."""
    for v in itertools.chain(vars(m).values(), forward_reads(m)):
        if isinstance(v, list | tuple):
            yield from v
        elif isinstance(v, dict):
            yield from v.values()
        else:
            yield v


def _generators(modules: list[nn.Module]) -> list[HostGenerator]:
    found: dict[int, HostGenerator] = {}
    for m in modules:
        if _own_state(m):
            for v in _candidates(m):
                if id(v) not in found and (g := HostGenerator.of(v)) is not None:
                    found[id(v)] = g
    return list(found.values())


def _attributes(modules: list[nn.Module]) -> dict[tuple[int, str], Any]:
    return {
        (i, k): v
        for i, m in enumerate(modules)
        if _own_state(m)
        for k, v in vars(m).items()
        if type(v) in _SCALARS and not k.startswith("_")
    }


def _kept_state(modules: list[nn.Module]) -> dict[tuple[int, str], Any]:
    """Lists and tensors a module keeps as plain attributes: a forward must not change them."""
    return {
        (i, k): (list(v) if isinstance(v, list) else v)
        for i, m in enumerate(modules)
        if _own_state(m)
        for k, v in vars(m).items()
        if isinstance(v, list | Tensor) and not k.startswith("_")
    }


def _same_state(a: Any, b: Any) -> bool:
    """Equality of generator states: tensors, NumPy arrays, and containers of them."""
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
        )
    if hasattr(a, "shape") and hasattr(a, "dtype"):  # a NumPy array
        return bool(getattr(a == b, "all", lambda: a == b)()) and a.shape == b.shape
    return bool(a == b)


@dataclass
class HostState:
    """The host generators' states and the modules' scalar attributes, before a call."""

    modules: list[nn.Module]
    python: Any
    numpy: Any
    generators: list[tuple[HostGenerator, Any]]
    attributes: dict[tuple[int, str], Any]
    kept: dict[tuple[int, str], Any]

    @classmethod
    def capture(cls, fn: Any) -> HostState:
        modules = submodules(fn) if isinstance(fn, nn.Module) else []
        np_random = _numpy_random()
        return cls(
            modules,
            random.getstate(),
            np_random.get_state() if np_random is not None else None,
            [(g, g.get()) for g in _generators(modules)],
            _attributes(modules),
            _kept_state(modules),
        )

    def changes(self, owner: str = "ReversibleSequence(mode='reversible')") -> HostChanges | None:
        """What the call changed since :meth:`capture`, and every scalar attribute as the call
        left it (``None`` for nothing). Raises if the call changed a list or tensor it keeps."""
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
        out.generators = [(g, s) for g, s in self.generators if not _same_state(g.get(), s)]
        now = _attributes(self.modules)
        # all of them: one the user sets between forward and backward is replayed as the call saw it
        out.attributes = [
            (self.modules[i], k, before, now.get((i, k), before))
            for (i, k), before in self.attributes.items()
        ]
        kept = _kept_state(self.modules)
        for (i, k), before in self.kept.items():
            after = kept.get((i, k))
            same = (
                after is before
                if isinstance(before, Tensor)
                else isinstance(after, list)
                and len(after) == len(before)
                and all(x is y for x, y in zip(after, before, strict=True))
            )
            if not same:
                raise _kept_state_error(owner, self.modules[i], k, before)
        out.tensors = [
            (self.modules[i], k, t, t._version)
            for (i, k), t in self.kept.items()
            if isinstance(t, Tensor)
        ]
        return out if out else None


def _kept_state_error(owner: str, m: nn.Module, key: str, value: Any) -> RuntimeError:
    kind = "tensor" if isinstance(value, Tensor) else "list"
    return RuntimeError(
        f"{owner}: the forward of {type(m).__name__} changed its {kind} attribute {key!r}. The "
        "backward step runs the forward again, which would see it changed and compute something "
        "else. Keep running state in a buffer (register_buffer: updated once, replayed), return "
        "what a later loss needs as part of the output, or use mode='autograd'."
    )


def _same_numpy_state(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return a[0] == b[0] and a[2:] == b[2:] and (a[1] == b[1]).all()


@dataclass
class HostChanges:
    """The states before a recorded call of the host generators and attributes that the call
    changed."""

    python: Any = None
    numpy: Any = None
    generators: list[tuple[HostGenerator, Any]] = field(default_factory=list)
    attributes: list[tuple[nn.Module, str, Any, Any]] = field(default_factory=list)
    tensors: list[tuple[nn.Module, str, Tensor, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return (
            self.python is not None
            or self.numpy is not None
            or bool(self.generators)
            or bool(self.attributes)
            or bool(self.tensors)
        )

    def check_tensors(self, owner: str = "ReversibleSequence(mode='reversible')") -> None:
        """Raise if a tensor a module keeps as a plain attribute (a mask, a table) was replaced
        or changed in place since the forward: the replay would compute with the new one."""
        for m, k, t, version in self.tensors:
            if getattr(m, k, None) is not t or t._version != version:
                raise RuntimeError(
                    f"{owner}: the tensor attribute {k!r} of {type(m).__name__} was replaced or "
                    "changed in place between the forward and the backward (e.g. a mask refilled "
                    "for the next micro-batch). The backward step runs the forward again and "
                    "would use the new one. Pass it through the chain instead (seq(x, mask=m): "
                    "the engine keeps what the forward received), run backward before changing "
                    "it, or use mode='autograd'."
                )

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body from the states before the call; put back the states of now afterwards."""
        self.check_tensors()
        np_random = _numpy_random() if self.numpy is not None else None
        now_python = random.getstate() if self.python is not None else None
        now_numpy = np_random.get_state() if np_random is not None else None
        now_generators = [(g, g.get()) for g, _ in self.generators]
        now_attributes = [(m, k, getattr(m, k)) for m, k, _, _ in self.attributes]
        if self.python is not None:
            random.setstate(self.python)
        if np_random is not None:
            np_random.set_state(self.numpy)
        for g, state in self.generators:
            g.set(state)
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
                g.set(state)
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
