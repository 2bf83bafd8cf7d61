"""Pieces that every model family here shares: convolutions and BatchNorm as in the
official RevNet code, its parameter-free shortcut, its initialisation, and a
parameter counter.

Chang et al. (2018) built their Hamiltonian, Midpoint and Leapfrog networks on
the RevNet code of Gomez et al. (2017), so :mod:`revlib.models.ode` uses the same
pieces as :mod:`revlib.models.revnet`.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = [
    "BN_MOMENTUM",
    "BN_EPS",
    "batch_norm",
    "conv2d",
    "pool_pad",
    "init_official",
    "count_parameters",
]

BN_MOMENTUM = 0.01
"""PyTorch's momentum for the official TensorFlow ``decay=0.99``."""
BN_EPS = 1e-3
"""The official code's BatchNorm epsilon."""


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the official code's settings (momentum 0.01, eps 1e-3)."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def conv2d(in_c: int, out_c: int, k: int, stride: int = 1) -> nn.Conv2d:
    """A ``k x k`` convolution without bias, padded to keep the size at stride 1."""
    return nn.Conv2d(in_c, out_c, k, stride=stride, padding=k // 2, bias=False)


def pool_pad(x: Tensor, stride: int, out_channels: int) -> Tensor:
    """Average-pool by ``stride`` and zero-pad the channels symmetrically to ``out_channels``.

    The parameter-free shortcut of the official code (and of Chang et al.'s
    networks): ``avg_pool(stride, stride)``, then ``(out - in) // 2`` zero
    channels before and after. ``out_channels - in_channels`` must be even
    and not negative.
    """
    if stride > 1:
        x = nn.functional.avg_pool2d(x, stride, stride, ceil_mode=True)
    extra = out_channels - x.shape[1]
    if extra < 0 or extra % 2:
        raise ValueError(
            f"pool_pad: cannot pad {x.shape[1]} channels symmetrically to {out_channels}"
        )
    if extra:
        x = nn.functional.pad(x, (0, 0, 0, 0, extra // 2, extra // 2))
    return x


def init_official(model: nn.Module) -> nn.Module:
    """The official code's initialisation (see the module docstring); returns ``model``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            std = math.sqrt(2.0 / (k * m.out_channels))
            nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = math.sqrt(3.0 / m.in_features)
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def count_parameters(model: nn.Module) -> int:
    """The number of parameter entries (each shared parameter once, as ``parameters()`` yields
    it)."""
    return sum(p.numel() for p in model.parameters())
