"""VGG-19 for CIFAR and its reversible variant Rev-VGG, after Saha and Priyanka's tables.

Saha and Priyanka ("Reversible Nets", course slides, EECE 7398, Northeastern
University) tabulate both networks layer by layer.

**VGG-19** is their CIFAR variant: sixteen 3x3 convolutions with
bias, each followed by BatchNorm and ReLU, in five stages of widths 64, 128,
256, 512, 512 (2, 2, 4, 4, 4 convolutions), each closed by 2x2 max pooling, so
a 32x32 image ends at 512x1x1; then three fully connected layers 512-512-512-10
with ReLU between them. 20,565,834 parameters, as their table says.

**Rev-VGG** follows their second table row by row: a 3x3 convolution
3->64 (with bias, no BatchNorm, then ReLU), max pooling, then four RevBlocks
(64->128, 128->256, 256->512, 512->512), each followed by max pooling, a
"linear block" of two 512->512 layers, and the 512->10 classifier. The table
gives each RevBlock's parameter count but not its inside. Ours
(:class:`RevVGGBlock`) has exactly those counts and is genuinely reversible
where it can be:

* an **entry** layer, VGG's own first convolution of the stage with its
  BatchNorm and ReLU (in->out channels). A change of width is not invertible,
  so the entry keeps its input for the backward (it runs under checkpointing,
  :class:`~revlib.core.modes.CheckpointedModule`); that input is the max-pool
  output the table already counts;
* three **additive couplings** at the new width C in a
  :class:`~revlib.ReversibleSequence`, F and G each
  conv3x3(C/2->C/2, no bias)-BN-ReLU-conv3x3(C/2->C/2, with bias). VGG's
  other three C->C layers of the stage hold 3 x (9C^2 weights + C biases + 2C
  BN parameters) = 27C^2 + 9C; the six functions F, G hold
  6 x (2 x 9(C/2)^2 + 2(C/2) + C/2) = 27C^2 + 9C as well.

The per-block counts 517,632 / 2,067,456 / 8,263,680 / 9,443,328 and the total
20,824,330 are the table's exactly (checked in ``tests/models/test_vgg.py``).
The table's RevBlock_1 has four convolutions (64->128 and three 128->128) where
VGG-19's second stage has two; its RevBlock_4 (512->512) makes VGG-19's fifth
stage of four convolutions reversible too, and the 64->64 second convolution
of VGG-19's first stage is gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from ..core.couplings import AdditiveCoupling
from ..core.modes import CheckpointedModule, Mode, ModelMode
from ..core.sequence import ReversibleSequence

__all__ = [
    "VGG19_CONFIG",
    "VGG",
    "vgg19",
    "LinearBlock",
    "RevVGGEntry",
    "RevVGGBlock",
    "RevVGG",
    "rev_vgg",
]

VGG19_CONFIG: tuple[int | Literal["M"], ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)
"""Channels of VGG-19's convolutions; ``"M"`` is 2x2 max pooling."""


class LinearBlock(nn.Sequential):
    """Linear-ReLU pairs (the tables' "Linear block": one row for two layers)."""

    def __init__(self, features: Sequence[int], dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for a, b in zip(features[:-1], features[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class VGG(nn.Module):
    """A VGG network with BatchNorm for small images (CIFAR).

    Args:
        config: conv widths and ``"M"`` for max pooling (:data:`VGG19_CONFIG`).
        num_classes, in_channels: output and input sizes.
        hidden: width of the two hidden fully connected layers (512).
        dropout: dropout after each hidden FC layer's ReLU (0, the default:
            none; the tables list no dropout).

    Five max poolings take a 32x32 image to 512x1x1, which the classifier
    reads directly (no global pooling, as in the tables): inputs must be 32x32.
    """

    def __init__(
        self,
        config: Sequence[int | Literal["M"]] = VGG19_CONFIG,
        num_classes: int = 10,
        in_channels: int = 3,
        hidden: int = 512,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), LinearBlock([c, hidden, hidden], dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def vgg19(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> VGG:
    """VGG-19 with BatchNorm, Saha and Priyanka's CIFAR variant: 20,565,834 parameters at 10
    classes."""
    return VGG(VGG19_CONFIG, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


def _half_function(c: int) -> nn.Sequential:
    """F or G of a Rev-VGG coupling on ``c`` channels: conv(no bias)-BN-ReLU-conv(bias)."""
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1),
    )


class RevVGGEntry(CheckpointedModule):
    """The channel-changing first layer of a RevBlock: conv3x3(bias)-BN-ReLU; keeps only its
    input."""

    def __init__(self, in_c: int, out_c: int, mode: Mode = "reversible") -> None:
        super().__init__(mode)
        self.conv = nn.Conv2d(in_c, out_c, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_c)
        self.relu = nn.ReLU()

    def compute(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class RevVGGBlock(nn.Module):
    """One Rev-VGG RevBlock: :class:`RevVGGEntry` (in->out), then ``couplings`` additive couplings
    at width out."""

    def __init__(
        self, in_c: int, out_c: int, couplings: int = 3, mode: Mode = "reversible"
    ) -> None:
        super().__init__()
        if out_c % 2:
            raise ValueError(f"RevVGGBlock: out_c must be even, got {out_c}")
        self.entry = RevVGGEntry(in_c, out_c, mode)
        half = out_c // 2
        self.blocks = ReversibleSequence(
            [
                AdditiveCoupling(_half_function(half), _half_function(half))
                for _ in range(couplings)
            ],
            mode=mode,
            ndim=4,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.entry(x))

    def kept_activations(self, x: Tensor, y: Tensor) -> int | None:
        """For :mod:`revlib.core.memcalc`, per sample: 0 in mode reversible (the tables' RevBlock
        rows).

        Mode ``"checkpoint"``: the input of each coupling (``couplings`` tensors
        of the output's size); mode ``"autograd"``: ``None``, list the layers.
        """
        mode = self.blocks.mode
        if mode == "autograd":
            return None
        if mode == "reversible":
            return 0
        return len(self.blocks.blocks) * y[0].numel()


class RevVGG(ModelMode, nn.Module):
    """Saha and Priyanka's Rev-VGG (see the module docstring); ``mode`` as in
    :class:`~revlib.ReversibleSequence`.

    Inputs must be 32x32 (five max poolings to 512x1x1, read by the classifier).
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512, 512),
        num_classes: int = 10,
        in_channels: int = 3,
        hidden: int = 512,
        couplings: int = 3,
        dropout: float = 0.0,
        mode: Mode = "reversible",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        ]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [RevVGGBlock(a, b, couplings, mode), nn.MaxPool2d(2, 2)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            LinearBlock([widths[-1], hidden, hidden], dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def rev_vgg(
    num_classes: int = 10, in_channels: int = 3, mode: Mode = "reversible", dropout: float = 0.0
) -> RevVGG:
    """Saha and Priyanka's Rev-VGG: 20,824,330 parameters at 10 classes."""
    return RevVGG(num_classes=num_classes, in_channels=in_channels, mode=mode, dropout=dropout)
