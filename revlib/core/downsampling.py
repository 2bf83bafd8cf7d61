r"""Invertible changes of shape: i-RevNet's space-to-depth :math:`\psi` and an injective zero
padding.

A RevNet stage transition pools and is not invertible, so the network stores
its input (Gomez et al. 2017). The i-RevNet (Jacobsen et al. 2018) downsamples
with :math:`\psi`, which moves every 2x2 (``factor`` x ``factor``) patch of
pixels into channels:

.. math::
    \psi(x)_{c f^2 + i f + j,\; h,\; w} = x_{c,\; f h + i,\; f w + j},
    \qquad (C, H, W) \mapsto (C f^2, H/f, W/f).

It only reorders entries (a permutation matrix), so it is a bijection, its
inverse is depth-to-space, it has no parameters and stores nothing. With it a
network is reversible from its first layer to its head.

:class:`InjectivePad` appends zero channels, ``x -> (x, 0)``: not onto, but
injective, with the left inverse "drop the padding". i-RevNet uses it to make
the channel count even (or larger) without losing information; a momentum
network uses it to start from zero velocity.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as nnf
from torch import Tensor

from .blocks import ReversibleBlock, Run

__all__ = ["SpaceToDepth", "InjectivePad"]


class SpaceToDepth(ReversibleBlock):
    r"""i-RevNet's invertible downsampling :math:`\psi` (Jacobsen et al. 2018).

    Maps (N, C, H, W) to (N, C·f², H/f, W/f) with ``f = factor`` by
    :func:`torch.nn.functional.pixel_unshuffle`; the inverse is
    :func:`~torch.nn.functional.pixel_shuffle`. Parameter-free; in a
    :class:`~revlib.core.sequence.ReversibleSequence` it stores nothing, and
    its backward step (the generic one) costs two reshapes.
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"SpaceToDepth: factor must be a positive integer, got {factor!r}")
        self.factor = factor

    def _check(self, x: Tensor, what: str, channels_divisible: bool) -> None:
        f = self.factor
        if x.dim() != 4:
            raise ValueError(
                f"SpaceToDepth: expected an {what} of shape (N, C, H, W), got shape "
                f"{tuple(x.shape)}"
            )
        if channels_divisible and x.shape[1] % (f * f):
            raise ValueError(
                f"SpaceToDepth: the {what} of shape {tuple(x.shape)} has {x.shape[1]} channels, "
                f"not a multiple of factor**2 = {f * f}; it is not an output of this block"
            )
        if not channels_divisible and (x.shape[2] % f or x.shape[3] % f):
            raise ValueError(
                f"SpaceToDepth: height and width of the {what} (shape {tuple(x.shape)}) must be "
                f"multiples of factor={f}; pad the image first (e.g. 28x28 -> 32x32)"
            )

    def _forward(self, x: Tensor, run: Run) -> Tensor:
        self._check(x, "input", channels_divisible=False)
        return nnf.pixel_unshuffle(x, self.factor)

    def _inverse(self, y: Tensor, run: Run) -> Tensor:
        self._check(y, "output", channels_divisible=True)
        return nnf.pixel_shuffle(y, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class InjectivePad(ReversibleBlock):
    """Add ``pad`` zero entries along ``dim``: ``x -> cat(x, 0)`` (or ``cat(0, x)``); the inverse
    drops them.

    Injective, not onto: :meth:`inverse` is a left inverse, exact on the
    outputs of :meth:`forward`. The i-RevNet's injective variant pads the
    input channels this way (Jacobsen et al. 2018); a momentum network starts
    its velocity at zero with ``pad`` equal to the input's size along ``dim``.

    ``at="end"`` (the default) appends the zeros, ``at="start"`` puts them
    first. Where they go matters before a coupling: a channel that is exactly
    zero has zero variance, so a BatchNorm maps it to its bias (0 at
    initialisation), exactly on the kink of the ReLU after it, where the
    reversible backward's reconstruction (zero only to rounding) and autograd
    take different slopes. Appended zeros land in the second half, which the
    coupling's F reads; zeros put first land in the first half, which the
    coupling only adds to (:math:`y_1 = x_1 + F(x_2)`), so no branch reads them
    as long as ``pad`` is at most the input's size along ``dim``
    (:class:`~revlib.models.irevnet.IRevNet` pads so).
    """

    def __init__(self, pad: int, dim: int = 1, at: Literal["end", "start"] = "end") -> None:
        super().__init__()
        if not isinstance(pad, int) or pad < 0:
            raise ValueError(f"InjectivePad: pad must be a non-negative integer, got {pad!r}")
        if at not in ("end", "start"):
            raise ValueError(f"InjectivePad: at must be 'end' or 'start', got {at!r}")
        self.pad = pad
        self.dim = dim
        self.at = at

    def _forward(self, x: Tensor, run: Run) -> Tensor:
        if not -x.dim() <= self.dim < x.dim():
            raise ValueError(
                f"InjectivePad: input of shape {tuple(x.shape)} has no dimension {self.dim}"
            )
        shape = list(x.shape)
        shape[self.dim] = self.pad
        zeros = x.new_zeros(shape)
        return torch.cat([zeros, x] if self.at == "start" else [x, zeros], dim=self.dim)

    def _inverse(self, y: Tensor, run: Run) -> Tensor:
        if not -y.dim() <= self.dim < y.dim() or y.shape[self.dim] < self.pad:
            raise ValueError(
                f"InjectivePad: output of shape {tuple(y.shape)} has fewer than pad={self.pad} "
                f"entries along dimension {self.dim}"
            )
        start = self.pad if self.at == "start" else 0
        return y.narrow(self.dim, start, y.shape[self.dim] - self.pad)

    def extra_repr(self) -> str:
        return f"pad={self.pad}, dim={self.dim}" + (", at='start'" if self.at == "start" else "")
