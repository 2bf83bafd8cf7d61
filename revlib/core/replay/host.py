"""Host state: what a call changes besides torch's default generators and its buffers.

Code ported from elsewhere reaches state that torch's own bookkeeping does not
cover (what it reaches is found by :mod:`.reaches`):

* **random generators**: Python's :mod:`random`, NumPy's global generator, and
  every ``torch.Generator``, ``random.Random`` or NumPy generator a module
  reaches (an attribute, a container, a config, its code's closures and
  globals) or the call is passed (an extra argument). One the call drew from
  is replayed from its state before the call, then put back;
* **settings**: the scalar attributes of the call's modules, and the
  containers, plain objects (a config), globals, class attributes and closure
  cells that code defined outside torch reads: replayed as the call saw them
  (two levels deep), then put back;
* **kept state**: a forward that changes a list it keeps, or stores a tensor in
  its attributes, containers, objects, or a global or closure list, is refused
  (that tensor would have no graph); a tensor attribute replaced or refilled
  between the forward and the backward is refused at the replay.

Not reached: attributes of imported modules (``config.TEMP``), code of other
classes, class attributes of a config's class, objects with ``__slots__``,
settings nested three levels or deeper, a tensor a hook object counts with in
place, and the items of a container with more than :data:`~.reaches.MAX_ITEMS`
of them (copied, not looked into).
"""

from __future__ import annotations

import copy
import functools
import random
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.modules.module as _global_hooks
from torch import Tensor, nn

from .. import refusals
from .calls import submodules
from .reaches import (
    SCALARS,
    HostGenerator,
    generators_in,
    generators_reached,
    kept_containers,
    own_state,
    read_globals,
    stored_tensors,
)
from .swap import Slot, swapped

__all__ = ["HostRecord", "HostWatch"]


class _NumpyRandom(Protocol):
    """What this module uses of ``numpy.random`` (the global generator's state)."""

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> Any: ...


def _numpy_random() -> _NumpyRandom | None:
    """NumPy's global generator module if NumPy is imported (the core does not import it)."""
    np = sys.modules.get("numpy")
    return getattr(np, "random", None) if np is not None else None


def _reaches_no_host_state(fn: Any, modules: list[nn.Module]) -> bool:
    """True if a call of ``fn`` cannot touch host state: a module made only of torch's own layers,
    with no hook on any of them and no global module hook (a hook may draw or set anything)."""
    return (
        isinstance(fn, nn.Module)
        and not (_global_hooks._global_forward_hooks or _global_hooks._global_forward_pre_hooks)
        and not any(own_state(m) or m._forward_hooks or m._forward_pre_hooks for m in modules)
    )


_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, functools.partial)
"""Attributes that name a function (an activation, ``self.act = torch.relu``)."""


def _attributes(modules: list[nn.Module]) -> dict[tuple[int, str], Any]:
    """The scalar attributes of every module (torch's too: a hook may read one)."""
    return {
        (i, k): v
        for i, m in enumerate(modules)
        for k, v in vars(m).items()
        if isinstance(v, SCALARS + _FUNCTIONS)
        and not isinstance(v, Tensor)
        and not k.startswith("_")
    }


def _kept_state(modules: list[nn.Module]) -> dict[tuple[int, str], Any]:
    """Lists and tensors a module keeps as plain attributes: a forward must not change them."""
    return {
        (i, k): (list(v) if isinstance(v, list) else v)
        for i, m in enumerate(modules)
        if own_state(m)
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


def _same_numpy_state(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return a[0] == b[0] and a[2:] == b[2:] and (a[1] == b[1]).all()


class HostWatch:
    """The :class:`~revlib.core.replay.protocol.Watch` of the host state a call of a module
    reaches."""

    def __init__(
        self,
        fn: Callable[..., Any],
        x: Tensor,
        names: dict[int, str],
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.modules = submodules(fn) if isinstance(fn, nn.Module) else []
        self.idle = _reaches_no_host_state(fn, self.modules)
        if self.idle:
            return
        np_random = _numpy_random()
        self.python = random.getstate()
        self.numpy = np_random.get_state() if np_random is not None else None
        # the generators the modules reach, and those passed in (an extra argument, a config)
        passed = generators_in(kwargs.values()) if kwargs else []
        self.generators = [(g, g.get()) for g in generators_reached(self.modules) + passed]
        self.attributes = _attributes(self.modules)
        self.containers = kept_containers(self.modules)
        self.globals = read_globals(self.modules)
        self.kept = _kept_state(self.modules)

    def __enter__(self) -> HostWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def record(self) -> HostRecord | None:
        """What the call changed, and every scalar attribute as the call left it. Raises if the
        call changed a list or tensor it keeps."""
        if self.idle:
            return None
        out = HostRecord()
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
        out.containers = [
            (self.modules[i], k, before) for (i, k), before in self.containers.items()
        ]
        out.globals = self.globals
        # a tensor the forward stored in a container or object it keeps has no graph
        for (i, k), before in self.containers.items():
            for where, t in stored_tensors(before, vars(self.modules[i]).get(k)):
                raise refusals.tensor_kept_from_forward(
                    refusals.OWNER, self.modules[i], k + where, t
                )
        for slot, before in self.globals:
            if isinstance(before, list):  # a global or closure list collecting losses
                for _, t in stored_tensors(before, slot.get()):
                    raise refusals.tensor_kept_in_shared_list(refusals.OWNER, self.modules[0], t)
        kept = _kept_state(self.modules)
        for (i, k), t in kept.items():
            if (i, k) not in self.kept and isinstance(t, Tensor) and t.is_floating_point():
                raise refusals.tensor_kept_from_forward(refusals.OWNER, self.modules[i], k, t)
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
                raise refusals.kept_state_changed(refusals.OWNER, self.modules[i], k, before)
        out.attribute_tensors = [
            (self.modules[i], k, t, t._version)
            for (i, k), t in self.kept.items()
            if isinstance(t, Tensor)
        ]
        return out if out else None


@dataclass
class HostRecord:
    """The host generators' states, the scalar and container attributes and the globals as a
    recorded call saw them, and the tensor attributes it read (checked before a replay)."""

    python: Any = None
    numpy: Any = None
    generators: list[tuple[HostGenerator, Any]] = field(default_factory=list)
    attributes: list[tuple[nn.Module, str, Any, Any]] = field(default_factory=list)
    containers: list[tuple[nn.Module, str, Any]] = field(default_factory=list)
    globals: list[tuple[Slot, Any]] = field(default_factory=list)
    attribute_tensors: list[tuple[nn.Module, str, Tensor, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return (
            self.python is not None
            or self.numpy is not None
            or bool(self.generators)
            or bool(self.attributes)
            or bool(self.containers)
            or bool(self.globals)
            or bool(self.attribute_tensors)
        )

    def check_tensors(self) -> None:
        """Raise if a tensor a module keeps as a plain attribute (a mask, a table) was replaced
        or changed in place since the forward: the replay would compute with the new one."""
        for m, k, t, version in self.attribute_tensors:
            if getattr(m, k, None) is not t or t._version != version:
                raise refusals.tensor_attribute_changed(refusals.OWNER, m, k)

    def _slots(self) -> Iterator[tuple[Slot, Any]]:
        if self.python is not None:
            yield Slot.of(random.getstate, random.setstate), self.python
        np_random = _numpy_random() if self.numpy is not None else None
        if np_random is not None:
            yield Slot.of(np_random.get_state, np_random.set_state), self.numpy
        for g, state in self.generators:
            yield Slot.of(g.get, g.set), state
        for m, k, before, _ in self.attributes:
            yield Slot.attribute(m, k), before
        for m, k, before in self.containers:  # a copy: the replay may change it
            yield Slot.attribute(m, k), copy.copy(before)
        for slot, before in self.globals:
            yield slot, copy.copy(before)

    def replay(self) -> AbstractContextManager[object]:
        self.check_tensors()
        return swapped(self._slots())

    def tensors(self) -> list[Tensor]:
        return []

    def with_tensors(self, tensors: Iterator[Tensor]) -> HostRecord:
        return self
