"""What a module's code reaches besides its parameters and buffers, and how to keep a copy.

Random generators (:class:`HostGenerator`), one level into containers and
objects; the list, tuple and dict attributes and plain objects (a config) of
modules defined outside torch (:func:`kept_containers`); the settings their code
reads from globals, class attributes and closure cells (:func:`read_globals`),
and those a hook's code reads (:func:`function_state`). Copies are taken two
levels deep (:func:`snapshot`): a config holding a dict, a dict of dicts.
:func:`stored_tensors` finds a tensor a call stored in them. :mod:`.host`
records and replays all of these.
"""

from __future__ import annotations

import copy
import functools
import itertools
import numbers
import random
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .calls import forward_cells, forward_globals, forward_reads, read_names, user_code
from .swap import Slot

__all__ = [
    "CONTAINERS",
    "SCALARS",
    "HostGenerator",
    "function_state",
    "generators_in",
    "generators_reached",
    "kept_containers",
    "own_state",
    "plain_object",
    "read_globals",
    "snapshot",
    "stored_tensors",
]

SCALARS = (numbers.Number, str, type(None))
"""Settings a call may read: numbers (NumPy's too), strings, ``None``."""
CONTAINERS = (list, tuple, dict)
MAX_ITEMS = 256
"""A container with more items (a vocabulary) is copied but not looked into: per call, every
look costs time in proportion to its size."""


def own_state(m: nn.Module) -> bool:
    """False for torch's own layers (``torch.nn.modules``), whose forward changes no attribute and
    draws no host RNG."""
    cls = type(m)
    own = _OWN_STATE.get(cls)
    if own is None:
        own = _OWN_STATE[cls] = not cls.__module__.startswith("torch.nn.modules.")
    return own


_OWN_STATE: dict[type, bool] = {}


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


def generators_in(values: Iterable[Any]) -> list[HostGenerator]:
    """The random generators among ``values``, one level into lists, tuples, dicts and the
    attributes of other objects (an extra argument, a config): each once."""
    found: dict[int, HostGenerator] = {}
    for value in values:
        inner = (
            value.values()
            if isinstance(value, dict)
            else value
            if isinstance(value, list | tuple)
            else vars(value).values()
            if plain_object(value)
            else ()
        )
        for v in (value, *inner):
            if id(v) not in found and (g := HostGenerator.of(v)) is not None:
                found[id(v)] = g
    return list(found.values())


def _reached(m: nn.Module) -> Iterator[Any]:
    """Attribute values of ``m`` and what its forward reads from closures and globals, with the
    items of those that are lists, tuples or dicts and the attributes of plain objects."""
    for v in itertools.chain(vars(m).values(), forward_reads(m)):
        if isinstance(v, list | tuple | dict) and len(v) > MAX_ITEMS:
            yield v
        elif isinstance(v, list | tuple):
            yield from v
        elif isinstance(v, dict):
            yield from v.values()
        elif plain_object(v):
            yield v
            yield from vars(v).values()
        else:
            yield v


def generators_reached(modules: list[nn.Module]) -> list[HostGenerator]:
    found: dict[int, HostGenerator] = {}
    for m in modules:
        if own_state(m):
            for v in _reached(m):
                if id(v) not in found and (g := HostGenerator.of(v)) is not None:
                    found[id(v)] = g
    return list(found.values())


def kept_containers(modules: list[nn.Module]) -> dict[tuple[int, str], Any]:
    """A :func:`snapshot` of each list, tuple and dict attribute and each plain object (a config)
    of the modules defined outside torch."""
    out = {}
    for i, m in enumerate(modules):
        if own_state(m):
            for k, v in vars(m).items():
                if not k.startswith("_") and (isinstance(v, CONTAINERS) or plain_object(v)):
                    try:
                        out[(i, k)] = snapshot(v)
                    except Exception:  # an object that refuses to be copied is not replayed
                        continue
    return out


def snapshot(value: Any, depth: int = 2) -> Any:
    """A copy of a list, dict or plain object and of the lists, dicts and plain objects it holds,
    ``depth`` levels deep (tensors, modules, generators and other values shared)."""
    if depth == 0 or not (isinstance(value, list | dict) or plain_object(value)):
        return value
    out = copy.copy(value)
    if isinstance(out, list | dict) and len(out) > MAX_ITEMS:
        return out
    if isinstance(out, list):
        out[:] = [snapshot(v, depth - 1) for v in out]
    else:
        inner = out if isinstance(out, dict) else vars(out)
        for k, v in inner.items():
            inner[k] = snapshot(v, depth - 1)
    return out


def plain_object(v: Any) -> bool:
    """An object with attributes of its own that is not a module, tensor, function, class or
    random generator (those are handled elsewhere or hold no state of F's)."""
    return (
        isinstance(getattr(v, "__dict__", None), dict)
        and not isinstance(v, _NOT_PLAIN)
        and HostGenerator.of(v) is None
    )


_NOT_PLAIN = (
    nn.Module,
    Tensor,
    type,
    types.ModuleType,
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    functools.partial,
)


def read_globals(modules: list[nn.Module]) -> list[tuple[Slot, Any]]:
    """The place and a :func:`snapshot` of each scalar or container global, or cell of its
    closure, that the forward of a module defined outside torch reads."""
    found: dict[tuple[int, str], tuple[Slot, Any]] = {}
    for m in modules:
        for namespace, name in forward_globals(m):
            v = namespace[name]
            if _setting(v):
                found[(id(namespace), name)] = (Slot.item(namespace, name), snapshot(v))
        for cls in type(m).__mro__:  # class attributes of the module's own classes
            if cls is not object and user_code(cls):
                for name, v in vars(cls).items():
                    if not name.startswith("_") and (_setting(v)):
                        slot = Slot.of(
                            functools.partial(getattr, cls, name),
                            functools.partial(setattr, cls, name),
                        )
                        found[(id(cls), name)] = (slot, snapshot(v))
        for cell in forward_cells(m):
            v = cell.cell_contents
            if _setting(v):
                found[(id(cell), "")] = (_cell_slot(cell), snapshot(v))
    return list(found.values())


def _setting(v: Any) -> bool:
    """A value a call may read as a setting: a scalar, a container or a plain object."""
    return (isinstance(v, SCALARS + CONTAINERS) and not isinstance(v, Tensor)) or plain_object(v)


def function_state(fn: Any) -> list[tuple[Slot, Any]]:
    """The place and a :func:`snapshot` of each scalar or container global and closure cell that
    a function ``fn`` (a hook) reads, and of the attributes of the object of a bound method or a
    callable object: its state, which a second call must see as the first did."""
    out: list[tuple[Slot, Any]] = []
    if isinstance(fn, functools.partial):  # its bound keyword values, then its function
        for k, v in fn.keywords.items():
            if _setting(v):
                out.append((Slot.item(fn.keywords, k), snapshot(v)))
        fn = fn.func
    owner = getattr(fn, "__self__", None) if isinstance(fn, types.MethodType) else None
    if owner is None and not isinstance(fn, types.FunctionType) and plain_object(fn):
        owner, fn = fn, vars(type(fn)).get("__call__")  # a callable object's own __call__
    if owner is not None and (plain_object(owner) or isinstance(owner, nn.Module)):
        for k, v in vars(owner).items():
            if not k.startswith("_") and _setting(v):
                out.append((Slot.attribute(owner, k), snapshot(v)))
    fn = getattr(fn, "__func__", fn)
    if not isinstance(fn, types.FunctionType):
        return out
    namespace = fn.__globals__
    for name in read_names(fn.__code__):
        if name not in namespace:  # an attribute's name, or a builtin
            continue
        v = namespace[name]
        if _setting(v):
            out.append((Slot.item(namespace, name), snapshot(v)))
    for cell in fn.__closure__ or ():
        try:
            v = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _setting(v):
            out.append((_cell_slot(cell), snapshot(v)))
    return out


def _cell_slot(cell: types.CellType) -> Slot:
    """The place a closure cell is: read and written through ``cell_contents``."""
    return Slot.of(functools.partial(_contents, cell), functools.partial(_fill, cell))


def _contents(cell: types.CellType) -> Any:
    return cell.cell_contents


def _fill(cell: types.CellType, value: Any) -> None:
    cell.cell_contents = value


def stored_tensors(before: Any, after: Any, depth: int = 2) -> Iterator[tuple[str, Tensor]]:
    """``(where, tensor)`` for each floating tensor in ``after`` (a dict, a list or a plain
    object, ``depth`` levels deep) that ``before``, its :func:`snapshot` from before the call,
    did not hold at that level."""
    if isinstance(after, list | dict) and len(after) > MAX_ITEMS:
        return
    if isinstance(after, dict) and isinstance(before, dict):
        pairs = [(f"[{k!r}]", v, before.get(k)) for k, v in after.items()]
        held: Iterable[Any] = before.values()
    elif isinstance(after, list) and isinstance(before, list):
        pairs = [(f"[{n}]", v, before[n] if n < len(before) else None) for n, v in enumerate(after)]
        held = before
    elif plain_object(after) and type(before) is type(after):
        pairs = [(f".{k}", v, vars(before).get(k)) for k, v in vars(after).items()]
        held = vars(before).values()
    else:
        return
    old = {id(v) for v in held}
    for where, v, was in pairs:
        if isinstance(v, Tensor):
            if v.is_floating_point() and id(v) not in old:
                yield where, v
        elif depth > 1 and was is not None:
            for inner, t in stored_tensors(was, v, depth - 1):
                yield where + inner, t
