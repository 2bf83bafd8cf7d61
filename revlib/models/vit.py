r"""A small vision transformer (Dosovitskiy et al. 2021) in three memory regimes.

* :class:`ReversibleViT`: RevViT (Mangalam et al. 2022). The patch tokens are
  duplicated into two streams :math:`(x, x)`, go through a
  :class:`~revlib.core.sequence.ReversibleSequence` of
  :class:`~revlib.core.transformer.ReversibleTransformerBlock`\ s, and the two
  output streams are averaged. In mode ``"reversible"`` the stack stores only
  its output: the saved bytes do not grow with depth.
* :class:`ViT` (``checkpoint_blocks=False``): the standard twin, the same
  attention and MLP as one pre-LayerNorm residual stream; autograd stores
  every block's activations.
* :class:`ViT` (``checkpoint_blocks=True``): each block under
  :func:`torch.utils.checkpoint.checkpoint` (Chen et al. 2016), which stores
  each block's input.

All three: :class:`PatchEmbedding` (non-overlapping patches and a learned
position embedding), the blocks, then LayerNorm, mean over tokens and a linear
head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..core.modes import Mode, ModelMode
from ..core.sequence import ReversibleSequence
from ..core.transformer import ReversibleTransformerBlock, TransformerBlock

__all__ = ["PatchEmbedding", "ReversibleViT", "ViT"]


class PatchEmbedding(nn.Module):
    """(N, C, H, W) images to (N, T, width) tokens: a stride-``patch`` convolution plus positions.

    ``T = (image_size // patch)**2``; the position embedding is learned.
    """

    def __init__(self, image_size: int, patch: int, in_channels: int, width: int) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(
                f"PatchEmbedding: image_size {image_size} is not a multiple of patch {patch}"
            )
        self.image_size = image_size
        self.in_channels = in_channels
        self.tokens = (image_size // patch) ** 2
        self.proj = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, self.tokens, width))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"PatchEmbedding: expected images of shape (N, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got shape {tuple(x.shape)}"
            )
        return self.proj(x).flatten(2).transpose(1, 2) + self.position


class _Head(nn.Module):
    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc(self.norm(tokens).mean(dim=1))


class ReversibleViT(ModelMode, nn.Module):
    """RevViT: patch embedding, two streams through reversible blocks, averaged, head.

    Args:
        image_size, patch, in_channels: the input images and the patch size.
        num_classes: outputs of the head.
        width: features per stream (the stack carries ``2 * width``).
        depth: number of :class:`~revlib.core.transformer.ReversibleTransformerBlock`\\ s.
        heads, mlp_ratio, dropout, attn_dropout: as for the block.
        mode: backward mode of the stack. RNG states are always recorded
            (``preserve_rng_state=True``), so dropout masks are replayed.
    """

    def __init__(
        self,
        image_size: int,
        patch: int,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        mode: Mode = "reversible",
    ) -> None:
        super().__init__()
        self.embed = PatchEmbedding(image_size, patch, in_channels, width)
        blocks = [
            ReversibleTransformerBlock(width, heads, mlp_ratio, dropout, attn_dropout)
            for _ in range(depth)
        ]
        self.sequence = ReversibleSequence(blocks, mode=mode, preserve_rng_state=True, ndim=3)
        self.head = _Head(width, num_classes)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Class scores of images ``x``; ``attn_mask`` (patches x patches, boolean ``True`` =
        attend) reaches every block."""
        tokens = self.embed(x)
        extras = {} if attn_mask is None else {"attn_mask": attn_mask}
        y1, y2 = self.sequence(torch.cat([tokens, tokens], dim=-1), **extras).chunk(2, dim=-1)
        return self.head((y1 + y2) / 2)


class ViT(nn.Module):
    """The standard pre-LayerNorm ViT with the same blocks; optionally checkpointed per block.

    Arguments as for :class:`ReversibleViT`, with ``checkpoint_blocks``: run
    each block under non-reentrant :func:`torch.utils.checkpoint.checkpoint`
    (RNG state preserved) while training with gradients on.
    """

    def __init__(
        self,
        image_size: int,
        patch: int,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        self.embed = PatchEmbedding(image_size, patch, in_channels, width)
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, mlp_ratio, dropout, attn_dropout) for _ in range(depth)
        )
        self.head = _Head(width, num_classes)
        self.checkpoint_blocks = checkpoint_blocks

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        use_checkpoint = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            h = (
                checkpoint(block, h, use_reentrant=False, preserve_rng_state=True)
                if use_checkpoint
                else block(h)
            )
        return self.head(h)
