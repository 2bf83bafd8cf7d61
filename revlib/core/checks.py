"""Numerical checks of invertibility."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import ReversibleBlock
from .recompute import RNGState, Tape, frozen_norm_stats
from .sequence import ReversibleSequence

__all__ = ["check_inverse"]


def check_inverse(module: nn.Module, x: Tensor) -> float:
    """The largest absolute error :math:`\\max |f^{-1}(f(x)) - x|`.

    ``module`` is a :class:`ReversibleBlock`, a :class:`ReversibleSequence`, or
    any module with an ``inverse`` method. It runs in its current train/eval
    mode without building a graph; running statistics are not updated, random
    layers draw the same numbers in both directions, and the global RNG state
    is left as it was.
    """
    if not hasattr(module, "inverse"):
        raise TypeError(f"check_inverse: {type(module).__name__} has no inverse method")
    with torch.no_grad(), frozen_norm_stats(module), RNGState.capture(x).replay():
        if isinstance(module, ReversibleSequence):
            y, tapes = module.forward_recorded(x)
            x_again = module.inverse_replayed(y, tapes)
        elif isinstance(module, ReversibleBlock):
            tape = Tape.start(x, record_rng=True)
            x_again = module.inverse_replayed(module.forward_recorded(x, tape), tape)
        else:
            x_again = module.inverse(module(x))
    if x_again.shape != x.shape:
        raise ValueError(
            f"check_inverse: {type(module).__name__} maps shape {tuple(x.shape)} back to "
            f"{tuple(x_again.shape)}"
        )
    return (x_again.double() - x.double()).abs().max().item()
