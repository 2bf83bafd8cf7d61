"""Auxiliary losses reported from inside a sub-function (a mixture-of-experts balancing loss).

A sub-function calls :func:`add_aux_loss` with a scalar tensor; the
:class:`~revlib.core.sequence.ReversibleSequence` whose forward is running
collects them, in call order, in its ``aux_losses``, in every mode and with
autograd's gradients: add them to the loss (``loss = task + 0.01 *
sum(seq.aux_losses)``). In mode ``"reversible"`` each block's losses are outputs
of the block's autograd node; when one of them reaches the loss, the block's
backward step differentiates them too (one more replay of the block). Outside a
sequence's forward, :func:`add_aux_loss` keeps nothing; inside ``torch.compile`` it refuses.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["add_aux_loss", "collecting"]


class _Sink(threading.local):
    losses: list[Tensor] | None = None


_SINK = _Sink()


def add_aux_loss(loss: Tensor) -> None:
    """Report ``loss`` (a tensor) to the sequence whose forward is running."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"revlib.add_aux_loss: expected a Tensor, got {type(loss).__name__}")
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "revlib.add_aux_loss is not supported inside torch.compile: the collection is Python "
            "state that a compiled graph would not replay. Run the model eagerly to train with "
            "auxiliary losses (mode 'reversible' included)."
        )
    if _SINK.losses is not None:
        _SINK.losses.append(loss)


@contextlib.contextmanager
def collecting() -> Iterator[list[Tensor]]:
    """Collect the losses reported inside the body (the outer collection does not see them)."""
    outer, _SINK.losses = _SINK.losses, []
    try:
        yield _SINK.losses
    finally:
        _SINK.losses = outer
