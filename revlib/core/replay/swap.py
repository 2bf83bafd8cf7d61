"""Swap values in for the length of a body, and put the ones of now back afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Slot", "swapped"]


@dataclass(frozen=True)
class Slot:
    """A place that holds a value: how to read it and how to write it."""

    get: Callable[[], Any]
    set: Callable[[Any], Any]

    @staticmethod
    def item(mapping: MutableMapping[str, Any], key: str) -> Slot:
        """``mapping[key]`` (a module's ``_buffers`` or ``_parameters``)."""
        return Slot(lambda: mapping[key], lambda v: mapping.__setitem__(key, v))

    @staticmethod
    def attribute(obj: object, name: str) -> Slot:
        """``obj.name``, written with ``object.__setattr__`` (no ``nn.Module`` bookkeeping)."""
        return Slot(lambda: getattr(obj, name), lambda v: object.__setattr__(obj, name, v))


@contextlib.contextmanager
def swapped(values: Iterable[tuple[Slot, Any]]) -> Iterator[None]:
    """Run the body with each slot holding its value; restore every slot, in reverse order."""
    now: list[tuple[Slot, Any]] = []
    try:
        for slot, value in values:
            now.append((slot, slot.get()))
            slot.set(value)
        yield
    finally:
        for slot, value in reversed(now):
            slot.set(value)
