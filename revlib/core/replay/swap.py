"""Swap values in for the length of a body, and put the ones of now back afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
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


class swapped:  # noqa: N801 (used as a function: ``with swapped(...)``)
    """Run the body with each slot holding its value; restore every slot, in reverse order.

    A class rather than a generator context manager: the engine enters several per
    sub-function call, and most swap nothing.
    """

    __slots__ = ("values", "now")

    def __init__(self, values: Iterable[tuple[Slot, Any]]) -> None:
        self.values = values
        self.now: list[tuple[Slot, Any]] = []

    def __enter__(self) -> None:
        try:
            for slot, value in self.values:
                self.now.append((slot, slot.get()))
                slot.set(value)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        now, self.now = self.now, []
        for slot, value in reversed(now):
            slot.set(value)
