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

__all__ = ["cached_walks", "forward_reads", "keywords_for", "submodules"]


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
