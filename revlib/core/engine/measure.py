"""What storing one block's activations would cost and save, measured on the block itself.

A memory budget (:mod:`revlib.core.budget`) keeps the activations of some
blocks and reverses the rest. To choose, the chain measures each block once:
right after the block's recorded forward, :func:`measure_block` replays it
(:meth:`~revlib.core.replay.tape.Tape.replay`: same random draws, no state updated)
with autograd on, counting the bytes it saves for backward
(:class:`~revlib.core.memory.SavedTensorMeter`) and timing it, the cost of the
recomputation that storing the block would spare.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ..blocks import ReversibleBlock
from ..device import synchronize
from ..memory import SavedTensorMeter
from ..replay import Tape, cached_walks

__all__ = ["BlockCost", "measure_block"]

BlockCost = tuple[int, float]
"""``(bytes saved for backward if the block is stored, seconds of one recomputation)``."""


def measure_block(block: ReversibleBlock, x: Tensor, tape: Tape) -> BlockCost:
    """Replay ``block``'s recorded forward on ``x`` with autograd: the bytes it saves and its
    time. The graph is dropped at once; nothing the block holds changes."""
    owned = [*block.parameters(), *block.buffers()]
    leaf = x.detach().requires_grad_(x.is_floating_point() or x.is_complex())
    synchronize(x.device)
    start = time.perf_counter()
    with torch.enable_grad(), SavedTensorMeter(exclude=owned) as meter, cached_walks():
        out = block._forward(leaf, tape.replay)
    synchronize(x.device)
    seconds = time.perf_counter() - start
    del out
    return meter.bytes, seconds
