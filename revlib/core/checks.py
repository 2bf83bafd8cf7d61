"""Numerical checks of invertibility."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .replay import RNGState

__all__ = ["check_inverse"]


@runtime_checkable
class _Invertible(Protocol):
    """Anything with an ``inverse`` method (a reversible block or sequence, an invertible layer)."""

    def inverse(self, y: Tensor, **extras: Any) -> Tensor: ...


def check_inverse(module: nn.Module, x: Tensor, **extras: Any) -> float:
    """The largest absolute error :math:`\\max |f^{-1}(f(x)) - x|`.

    ``module`` is a :class:`~revlib.core.blocks.ReversibleBlock`, a
    :class:`~revlib.core.sequence.ReversibleSequence` (anything with a
    ``round_trip`` method), or any module with an ``inverse`` method. A block
    or sequence runs its forward and inverse recorded and replayed exactly as
    the reversible backward does (same random draws, same buffers, same
    autocast), so a large error here means the reversible backward would
    reconstruct wrong inputs. It runs in the current train/eval mode without
    building a graph; the module's buffers and the global RNG state are left
    as they were. ``extras`` are the chain's extra arguments (``cond=``, masks),
    passed to a block or sequence as in its forward.
    """
    if not isinstance(module, nn.Module) or not isinstance(module, _Invertible):
        raise TypeError(
            f"check_inverse: {type(module).__name__} has no inverse method (pass a reversible "
            "block or sequence)"
        )
    if not isinstance(x, Tensor):
        raise TypeError(
            f"check_inverse: expected the input as a Tensor, got {type(x).__name__}; "
            "pass a batch such as torch.randn(2, C, H, W)"
        )
    if x.numel() == 0:
        raise ValueError(
            f"check_inverse: the input is empty (shape {tuple(x.shape)}); pass at least one sample"
        )
    # every buffer is swapped for a copy during the check, so the module's own buffers keep their
    # values and version counters (a pending backward that saved them is not disturbed)
    buffers = [
        (m, name, b) for m in module.modules() for name, b in m._buffers.items() if b is not None
    ]
    for m, name, b in buffers:
        m._buffers[name] = b.clone()
    try:
        with torch.no_grad(), RNGState.capture(x).replay():
            round_trip = getattr(module, "round_trip", None)
            x_again: Tensor = (
                round_trip(x, **extras)
                if round_trip is not None
                else module.inverse(module(x, **extras), **extras)
            )
    finally:
        for m, name, b in buffers:
            m._buffers[name] = b
    if x_again.shape != x.shape:
        raise ValueError(
            f"check_inverse: {type(module).__name__} maps shape {tuple(x.shape)} back to "
            f"{tuple(x_again.shape)}"
        )
    wide = torch.complex128 if x.is_complex() else torch.float64  # complex: |difference| in C
    return float((x_again.to(wide) - x.to(wide)).abs().max().item())
