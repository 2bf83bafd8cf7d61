"""The one protocol of every kind of state a recorded call may see.

A kind of state is a :class:`Watch` class, built before the call as
``Kind(fn, x, names, kwargs)`` (the keyword arguments the call gets) and
entered around it. After the call, :meth:`Watch.record`
gives a :class:`Record` of what a second run needs, or ``None`` when the call
left nothing to replay. :class:`~revlib.core.replay.tape.Tape` keeps the records
per sub-function call and enters each one's :meth:`Record.replay` around the
second run. A new kind of state is one new pair of classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

from torch import Tensor

__all__ = ["Record", "Watch"]


class Record(Protocol):
    """What one kind of state was at a recorded call, ready to be put back for a replay."""

    def replay(self) -> AbstractContextManager[object]:
        """Set the state as the recorded call saw it; restore the state of now afterwards."""
        ...

    def tensors(self) -> list[Tensor]:
        """The tensors this record keeps (autograd saves them for the backward)."""
        ...

    def with_tensors(self, tensors: Iterator[Tensor]) -> Record:
        """This record with :meth:`tensors` replaced, in order, by ``tensors``."""
        ...


class Watch(Protocol):
    """One kind of state watched across a recorded call of ``fn`` on ``x``."""

    def __init__(
        self,
        fn: Callable[..., Any],
        x: Tensor,
        names: dict[int, str],
        kwargs: dict[str, Any] | None = None,
    ) -> None: ...

    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...

    def record(self) -> Record | None:
        """After the call: what a second run needs, or ``None``."""
        ...
