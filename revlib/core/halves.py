"""The channel split that couplings share, and halves carried between backward steps.

A coupling splits its input into two equal halves along one dimension
(:func:`split_dim`: channels for images, features for token sequences). In a
chain's backward pass a coupling may hand its reconstructed input to the step
before it as :class:`Halves`, two tensors of their own, so no concatenation is
spent on a tensor the next step splits again and the step's sub-functions
read contiguous halves, as in the forward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "Halves",
    "halves_of_difference",
    "join_halves",
    "join_halves_with_sum",
    "split_dim",
    "split_halves",
]


def split_dim(block: nn.Module) -> int:
    """The dimension ``block`` splits into halves: its ``dim`` attribute, 1 (channels) by
    default."""
    return getattr(block, "dim", 1)


def split_halves(block: nn.Module, x: Tensor, what: str = "input") -> tuple[Tensor, Tensor]:
    """Split ``x`` into two equal halves along the block's split dimension.

    The dimension is :func:`split_dim` of ``block``: 1 for images of shape
    (N, C, H, W), -1 for token sequences of shape (B, T, D). Raises
    ``ValueError`` naming the block, the dimension and the shape when ``x`` has
    no such dimension or an odd size along it.
    """
    name = type(block).__name__
    dim = split_dim(block)
    layout = (
        "(batch, channels, ...)"
        if dim == 1
        else f"at least {dim + 1 if dim >= 0 else -dim + 1} dimensions"
    )
    if x.dim() < 2 or not -x.dim() <= dim < x.dim():
        raise ValueError(
            f"{name}: expected an {what} of shape {layout} to split along dimension {dim}, "
            f"got shape {tuple(x.shape)}"
        )
    size = x.shape[dim]
    if size % 2 and dim == 1:
        raise ValueError(
            f"{name}: the {what} has an odd number of channels ({size}, shape {tuple(x.shape)}); "
            "a coupling splits the channels into two equal halves"
        )
    if size % 2:
        raise ValueError(
            f"{name}: the {what} has an odd size ({size}) along dimension {dim} (shape "
            f"{tuple(x.shape)}); a coupling splits that dimension into two equal halves"
        )
    x1, x2 = x.chunk(2, dim=dim)
    return x1, x2


def join_halves(block: nn.Module, first: Tensor, second: Tensor) -> Tensor:
    """Concatenate two halves along the block's split dimension (the inverse of
    :func:`split_halves`)."""
    return torch.cat([first, second], dim=split_dim(block))


class Halves(NamedTuple):
    """A block's input, carried as its two halves from one backward step of a chain to the next.

    ``buffer`` is ``None`` (the halves are tensors of their own, as a coupling's
    backward step makes them) or a full-size tensor whose first half along
    ``dim`` is ``first`` (the halves of a whole tensor; its second half need not
    hold ``second``). So the step before reads contiguous halves, the layout
    the forward gave its sub-functions, and no concatenation is spent on a
    tensor the next step splits again. :meth:`join` gives the full tensor,
    equal in value and layout to ``torch.cat([first, second], dim)``, for a
    block that takes whole tensors.
    """

    first: Tensor
    second: Tensor
    buffer: Tensor | None
    dim: int

    @classmethod
    def of(cls, block: nn.Module, y: Tensor | Halves, what: str = "output") -> Halves:
        """``y`` as halves along the block's split dimension (views of ``y`` if it is a whole
        tensor)."""
        if isinstance(y, Halves):
            if y.dim % y.first.dim() == split_dim(block) % y.first.dim():
                return y
            y = y.join()
        first, second = split_halves(block, y, what)
        return cls(first, second, y, split_dim(block))

    def join(self) -> Tensor:
        """The full tensor: the concatenation, or the buffer with ``second`` written into its
        second half (unless it is that half)."""
        if self.buffer is None:
            return torch.cat([self.first, self.second], dim=self.dim)
        half = self.buffer.chunk(2, dim=self.dim)[1]
        if not (
            half.data_ptr() == self.second.data_ptr() and half.stride() == self.second.stride()
        ):
            half.copy_(self.second)
        return self.buffer


def _same_dtype_contiguous(*tensors: Tensor | None) -> bool:
    first = tensors[0]
    if first is None:
        return False
    return all(t is not None and t.is_contiguous() and t.dtype == first.dtype for t in tensors)


def _empty_whole(block: nn.Module, half: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """An unwritten contiguous tensor made of two ``half``-shaped halves, and the two halves."""
    dim = split_dim(block)
    shape = list(half.shape)
    shape[dim] *= 2
    whole = torch.empty(shape, dtype=half.dtype, device=half.device)
    first, second = whole.chunk(2, dim=dim)
    return whole, first, second


def halves_of_difference(block: nn.Module, y: Halves, f: Tensor, second: Tensor) -> Halves:
    """``Halves(y.first - f, second)``, both tensors of their own: for a backward step, no graph.

    The first half comes contiguous, as the forward gave it to the next
    sub-function, so that step's replay needs no copy of it (a half of a
    full-size buffer is strided); :meth:`Halves.join` concatenates, bit for bit
    ``join_halves(block, y.first - f, second)``.
    """
    return Halves(y.first.detach() - f.detach(), second, None, split_dim(block))


def join_halves_with_sum(
    block: nn.Module, first: Tensor, whole: Tensor, addend: Tensor | None
) -> Tensor:
    """``join_halves(block, first, second + addend)`` with ``second`` the second half of ``whole``.

    The sum is written straight into the result (no concatenation copies it);
    bit for bit the concatenation. Falls back to it unless ``whole`` and ``first``
    are contiguous and all three of one dtype (``addend`` may have any layout: a
    compiled F's input gradient comes channels-last). ``addend=None`` adds
    nothing. For a backward step: the result carries no graph.
    """
    second = whole.chunk(2, dim=split_dim(block))[1]
    if addend is None or addend.dtype != whole.dtype or not _same_dtype_contiguous(whole, first):
        return join_halves(block, first, second if addend is None else second + addend)
    out, out_first, out_second = _empty_whole(block, first)
    out_first.copy_(first.detach())
    torch.add(second.detach(), addend.detach(), out=out_second)
    return out
