"""Swap values in for the length of a body, and put the ones of now back afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

__all__ = ["Slot", "swapped"]


class Slot:
    """A place that holds a value: how to read it (:meth:`get`) and how to write it
    (:meth:`set`).

    Built with :meth:`item`, :meth:`attribute` or :meth:`of`; the first two keep no closures
    (the engine makes one per parameter of a block, twice per step).
    """

    __slots__ = ()

    def get(self) -> Any:
        raise NotImplementedError

    def set(self, value: Any) -> None:
        raise NotImplementedError

    @staticmethod
    def item(mapping: MutableMapping[str, Any], key: str) -> Slot:
        """``mapping[key]`` (a module's ``_buffers`` or ``_parameters``)."""
        return _Item(mapping, key)

    @staticmethod
    def attribute(obj: object, name: str) -> Slot:
        """``obj.name``, written with ``object.__setattr__`` (no ``nn.Module`` bookkeeping)."""
        return _Attribute(obj, name)

    @staticmethod
    def of(get: Callable[[], Any], set: Callable[[Any], Any]) -> Slot:
        """A place read by ``get()`` and written by ``set(value)`` (a generator's state)."""
        return _Accessors(get, set)


class _Item(Slot):
    __slots__ = ("mapping", "key")

    def __init__(self, mapping: MutableMapping[str, Any], key: str) -> None:
        self.mapping, self.key = mapping, key

    def get(self) -> Any:
        return self.mapping[self.key]

    def set(self, value: Any) -> None:
        self.mapping[self.key] = value


class _Attribute(Slot):
    __slots__ = ("obj", "name")

    def __init__(self, obj: object, name: str) -> None:
        self.obj, self.name = obj, name

    def get(self) -> Any:
        return getattr(self.obj, self.name)

    def set(self, value: Any) -> None:
        object.__setattr__(self.obj, self.name, value)


class _Accessors(Slot):
    __slots__ = ("getter", "setter")

    def __init__(self, get: Callable[[], Any], set: Callable[[Any], Any]) -> None:
        self.getter, self.setter = get, set

    def get(self) -> Any:
        return self.getter()

    def set(self, value: Any) -> None:
        self.setter(value)


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
