r"""The reversible transformer block of RevViT (Mangalam et al. 2022) and its standard twin.

A pre-LayerNorm transformer block is two residual updates on tokens
:math:`x \in \mathbb{R}^{B \times T \times D}`:
:math:`x \leftarrow x + \mathrm{Attn}(\mathrm{LN}(x))`, then
:math:`x \leftarrow x + \mathrm{MLP}(\mathrm{LN}(x))` (Vaswani et al. 2017;
Dosovitskiy et al. 2021). RevViT keeps two streams :math:`(x_1, x_2)`, each of
width :math:`D`, and makes the two updates a RevNet coupling (Gomez et al. 2017):

.. math::
    y_1 = x_1 + F(x_2), \quad y_2 = x_2 + G(y_1), \qquad
    F = \mathrm{Attn}\circ\mathrm{LN}, \quad G = \mathrm{MLP}\circ\mathrm{LN}.

The LayerNorms sit *inside* F and G, so the coupling stays invertible whatever
they compute; attention mixes tokens but never the two streams, so the split
is along the feature dimension (``dim=-1``). The Reformer (Kitaev et al. 2020)
uses the same coupling. :class:`ReversibleTransformerBlock` is an
:class:`~revlib.core.couplings.AdditiveCoupling` and inherits its fused
backward step (one evaluation of F and of G).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from .couplings import AdditiveCoupling

__all__ = ["SelfAttention", "FeedForward", "ReversibleTransformerBlock", "TransformerBlock"]


def _check_tokens(owner: str, x: Tensor, width: int) -> None:
    if x.dim() != 3 or x.shape[-1] != width:
        raise ValueError(
            f"{owner}: expected tokens of shape (batch, tokens, {width}), got shape "
            f"{tuple(x.shape)}"
        )


class SelfAttention(nn.Module):
    r"""Pre-LayerNorm multi-head self-attention:
    :math:`x \mapsto \mathrm{Drop}(W_o\,\mathrm{MHA}(\mathrm{LN}(x)))`.

    Args:
        width: token width :math:`D` (a multiple of ``heads``).
        heads: number of attention heads.
        dropout: dropout on the output projection.
        attn_dropout: dropout on the attention probabilities.

    Without attention dropout it calls :func:`torch.nn.functional.scaled_dot_product_attention`.
    With it, the probabilities go through an ``nn.Dropout`` module, so that
    :class:`~revlib.core.sequence.ReversibleSequence` sees a random layer and
    replays its mask in the recomputation.
    """

    def __init__(
        self, width: int, heads: int, dropout: float = 0.0, attn_dropout: float = 0.0
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"SelfAttention: width {width} is not a multiple of heads={heads}")
        self.width = width
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.attn_drop = nn.Dropout(attn_dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """Attend over the tokens of ``x`` (B, T, D).

        ``attn_mask``: (T, T) or broadcastable to (B, heads, T, T); boolean
        (``True``: may attend, as :func:`~torch.nn.functional.scaled_dot_product_attention`)
        or float (added to the scores). ``key_padding_mask``: (B, T) boolean,
        ``True`` for padding tokens that no query attends to (as
        :class:`torch.nn.MultiheadAttention`). In a
        :class:`~revlib.core.sequence.ReversibleSequence` pass them to the
        sequence, ``seq(x, attn_mask=m)``: each block's attention receives them.
        """
        _check_tokens("SelfAttention", x, self.width)
        b, t, d = x.shape
        mask = _combined_mask(b, t, attn_mask, key_padding_mask, x)
        q, k, v = (
            self.qkv(self.norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )
        if self.attn_drop.training and self.attn_drop.p > 0:
            scores = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
            if mask is not None:
                scores = (
                    scores.masked_fill(~mask, float("-inf"))
                    if mask.dtype == torch.bool
                    else scores + mask
                )
            out = self.attn_drop(scores.softmax(dim=-1)) @ v
        else:
            out = nnf.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y: Tensor = self.drop(self.proj(out.transpose(1, 2).reshape(b, t, d)))
        return y


def _combined_mask(
    b: int, t: int, attn_mask: Tensor | None, key_padding_mask: Tensor | None, x: Tensor
) -> Tensor | None:
    """One mask for scaled-dot-product attention: boolean ``True`` = attend, or float added to the
    scores."""
    if key_padding_mask is not None:
        if key_padding_mask.shape != (b, t) or key_padding_mask.dtype != torch.bool:
            raise ValueError(
                "SelfAttention: key_padding_mask must be a boolean tensor of shape (batch, "
                f"tokens) = {(b, t)}, got {key_padding_mask.dtype} of shape "
                f"{tuple(key_padding_mask.shape)}"
            )
        keep = ~key_padding_mask[:, None, None, :]
        if attn_mask is None:
            return keep
        if attn_mask.dtype == torch.bool:
            return attn_mask & keep
        return attn_mask.to(x.dtype).masked_fill(~keep, float("-inf"))
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        return attn_mask.to(x.dtype)
    return attn_mask


class FeedForward(nn.Module):
    r"""Pre-LayerNorm MLP:
    :math:`x \mapsto \mathrm{Drop}(W_2\,\mathrm{Drop}(\mathrm{GELU}(W_1 \mathrm{LN}(x))))`."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.width = width
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, width),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        _check_tokens("FeedForward", x, self.width)
        y: Tensor = self.net(x)
        return y


class ReversibleTransformerBlock(AdditiveCoupling):
    r"""RevViT's block: :math:`y_1 = x_1 + \mathrm{Attn}(\mathrm{LN}(x_2))`,
    :math:`y_2 = x_2 + \mathrm{MLP}(\mathrm{LN}(y_1))`.

    Acts on (B, T, 2·width): two streams of ``width`` features each, split on
    the last dimension. Inverse :math:`x_2 = y_2 - G(y_1)`, :math:`x_1 = y_1 - F(x_2)`.
    Run a stack of them in a :class:`~revlib.core.sequence.ReversibleSequence`
    (pass ``preserve_rng_state=True`` when there is dropout) and the backward
    stores only the stack's output. Masks go through the sequence to every
    block's attention: ``seq(x, attn_mask=m, key_padding_mask=pad)``.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            SelfAttention(width, heads, dropout, attn_dropout),
            FeedForward(width, int(mlp_ratio * width), dropout),
            dim=-1,
        )
        self.width = width


class TransformerBlock(nn.Module):
    r"""The standard pre-LayerNorm block on one stream of ``width`` features.

    :math:`x \leftarrow x + \mathrm{Attn}(\mathrm{LN}(x))`,
    :math:`x \leftarrow x + \mathrm{MLP}(\mathrm{LN}(x))`, with the same sub-modules as
    :class:`ReversibleTransformerBlock` (the twin that autograd backpropagates through, storing
    every activation).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.F = SelfAttention(width, heads, dropout, attn_dropout)
        self.G = FeedForward(width, int(mlp_ratio * width), dropout)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        x = x + self.F(x, attn_mask=attn_mask, key_padding_mask=key_padding_mask)
        y: Tensor = x + self.G(x)
        return y
