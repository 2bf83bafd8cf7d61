"""How the engine calls a sub-function, and what the call can reach.

:func:`keywords_for` picks the chain's extra arguments a sub-function takes by
name; :func:`submodules` walks its modules (once per step inside
:func:`cached_walks`); :func:`forward_reads` lists what a module's ``forward``
reads from closures and globals.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

__all__ = [
    "cached_walks",
    "forward_cells",
    "forward_globals",
    "forward_reads",
    "keywords_for",
    "read_names",
    "user_code",
    "submodules",
]


def submodules(module: nn.Module) -> list[nn.Module]:
    """``list(module.modules())`` (pre-order, each module once), without the generator's per-step
    cost.

    The engine walks the sub-functions' modules several times per step; this
    plain loop over ``_modules`` is several times faster than ``named_modules``,
    and inside :func:`cached_walks` each module is walked once.
    """
    cache = _WALKS.cache
    if cache is not None:
        return _cached_walk(module, cache)
    out: list[nn.Module] = []
    seen: set[int] = set()
    stack = [module]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out.append(m)
        stack.extend(reversed([c for c in m._modules.values() if c is not None]))
    return out


_Cache = dict[int, tuple[nn.Module, list[nn.Module]]]


def _cached_walk(module: nn.Module, cache: _Cache) -> list[nn.Module]:
    """:func:`submodules`, caching the walk of every module below ``module`` too (the same
    pre-order: a module's list, then each child's, skipping what was already listed)."""
    hit = cache.get(id(module))
    if hit is not None and hit[0] is module:
        return hit[1]
    out, seen = [module], {id(module)}
    for child in module._modules.values():
        if child is not None:
            for m in _cached_walk(child, cache):
                if id(m) not in seen:
                    seen.add(id(m))
                    out.append(m)
    cache[id(module)] = (module, out)
    return out


class _Walks(threading.local):
    cache: _Cache | None = None


_WALKS = _Walks()


@contextlib.contextmanager
def cached_walks() -> Iterator[None]:
    """Within the body, :func:`submodules` walks each module once (the engine's forward or backward
    step of a block).

    The module tree must not change inside the body; the engine's own guard
    (:class:`~revlib.core.engine.guards.ModuleState`) checks it between the forward and the
    backward.
    """
    if _WALKS.cache is not None:
        yield
        return
    _WALKS.cache = {}
    try:
        yield
    finally:
        _WALKS.cache = None


def _accepted_keywords(fn: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword arguments ``fn`` accepts (``None``: any, it takes ``**kwargs``)."""
    target = fn.forward if isinstance(fn, nn.Module) else fn
    key = type(fn) if isinstance(fn, nn.Module) else target
    cached = _KEYWORDS.get(key, False)
    if not isinstance(cached, bool):  # False: not cached yet
        return cached
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        accepted = None
    else:
        if any(p.kind is p.VAR_KEYWORD for p in params):
            accepted = None
        else:
            accepted = frozenset(
                p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            )
    try:
        _KEYWORDS[key] = accepted
    except TypeError:
        pass
    return accepted


_KEYWORDS: weakref.WeakKeyDictionary[Any, frozenset[str] | None] = weakref.WeakKeyDictionary()


def keywords_for(
    fn: Callable[..., Any], extras: dict[str, Any], used: set[str] | None = None
) -> dict[str, Any]:
    """The chain's extra arguments that ``fn`` takes by name (all of them if it takes
    ``**kwargs``)."""
    if not extras:
        return {}
    accepted = _accepted_keywords(fn)
    out = extras if accepted is None else {k: v for k, v in extras.items() if k in accepted}
    if used is not None:
        used.update(out)
    return out


def read_names(code: types.CodeType) -> tuple[str, ...]:
    """The names ``code`` and the functions defined in it read (cached per code object)."""
    names = _NAMES.get(code)
    if names is None:
        found: dict[str, None] = {}
        codes = [code]
        while codes:
            c = codes.pop()
            codes += [k for k in c.co_consts if isinstance(k, types.CodeType)]
            found.update(dict.fromkeys(c.co_names))
        names = _NAMES[code] = tuple(found)
    return names


_NAMES: weakref.WeakKeyDictionary[types.CodeType, tuple[str, ...]] = weakref.WeakKeyDictionary()


def user_code(obj: Any) -> bool:
    """Defined outside torch and outside revlib's core (whose code reads no user state)."""
    return not (getattr(obj, "__module__", None) or "").startswith(("torch.", "revlib.core."))


def _own_code(m: nn.Module) -> list[types.FunctionType]:
    """``m.forward``'s function and every function of ``m``'s classes defined outside torch (the
    methods a forward calls); none for torch's own modules (cached per class)."""
    if not user_code(type(m)):
        return []
    forward = getattr(m.forward, "__func__", m.forward)
    if not isinstance(forward, types.FunctionType):
        return []
    methods = _METHODS.get(type(m))
    if methods is None:
        methods = _METHODS[type(m)] = [
            f
            for cls in type(m).__mro__
            if cls is not object and user_code(cls)
            for v in vars(cls).values()
            if isinstance(f := getattr(v, "__func__", getattr(v, "fget", v)), types.FunctionType)
        ]
    return [forward, *(f for f in methods if f is not forward)]


_METHODS: weakref.WeakKeyDictionary[type, list[types.FunctionType]] = weakref.WeakKeyDictionary()


def forward_globals(m: nn.Module) -> Iterator[tuple[dict[str, Any], str]]:
    """``(namespace, name)`` of each bound global name that ``m``'s forward reads: in its code,
    its class's methods and the functions defined in them, and the module-level functions they
    call (defined outside torch, followed by name); nothing for torch's own modules."""
    todo, seen = _own_code(m), set()
    while todo:
        fn = todo.pop()
        if fn in seen:
            continue
        seen.add(fn)
        namespace = fn.__globals__
        for name in read_names(fn.__code__):
            if name in namespace:
                yield namespace, name
                v = namespace[name]
                if isinstance(v, types.FunctionType) and user_code(v):
                    todo.append(v)


def forward_cells(m: nn.Module) -> Iterator[types.CellType]:
    """The filled cells of the closures of ``m.forward`` and its class's methods; none for torch's
    own modules."""
    for fn in _own_code(m):
        for cell in fn.__closure__ or ():
            try:
                _ = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            yield cell


def forward_reads(m: nn.Module) -> Iterator[Any]:
    """The closure cells and global names that ``m``'s forward reads (:func:`forward_globals`);
    nothing for torch's own modules."""
    for cell in forward_cells(m):
        yield cell.cell_contents
    for namespace, name in forward_globals(m):
        yield namespace[name]
