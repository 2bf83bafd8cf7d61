"""RevNet and its ResNet baselines, after the official code of Gomez et al. (2017).

The official TensorFlow code (``renmengye/revnet-public``, ``resnet_model.py``
and ``revnet_model.py``) fixes every detail that the parameter counts of the
paper's tables depend on. This module follows it:

* **stem**: conv (3x3 stride 1 on CIFAR; 7x7 stride 2 and a 3x3 stride-2 max
  pool on ImageNet), then BN and ReLU;
* **pre-activation units** (He et al. 2016, "v2"): a basic branch is
  BN-ReLU-conv3x3, BN-ReLU-conv3x3; a bottleneck branch is BN-ReLU-conv1x1,
  BN-ReLU-conv3x3, BN-ReLU-conv1x1 with the inner width a quarter of the output
  width. The very first unit of the network skips its leading BN-ReLU: the stem
  has just applied one (``no_activation`` in the official code);
* **shortcuts** that change the shape: stride-2 average pooling plus symmetric
  zero-padding of the channels for basic units (no parameters), a 1x1
  projection convolution (with the stride) for bottleneck units, also when only
  the number of channels changes;
* **head**: a final BN-ReLU, global average pooling, a fully connected layer
  with bias.

A **RevNet unit** splits the channels into halves and computes
:math:`y_1 = x_1 + F(x_2)`, :math:`y_2 = x_2 + G(y_1)`, with F and G branches of
half the width (:class:`revlib.AdditiveCoupling`). The first unit of a stage
that changes the shape (stride 2, or more channels) is the same computation
with the shortcuts above applied to each half; it is not invertible, so it is a
:class:`RevTransition` outside the stage's :class:`revlib.ReversibleSequence`.
Like the official code, which keeps the input of every such unit and re-runs
it in the backward pass, a RevTransition stores only its input in modes
``"reversible"`` and ``"checkpoint"`` (it runs under non-reentrant
checkpointing) and everything in mode ``"autograd"``.

Parameter counts equal the official code's exactly (conv weights without bias,
BN scale and shift, FC weight and bias), e.g. 464,154 for ResNet-32 and 464,890
for RevNet-38 at 10 classes; ``tests/models/test_revnet.py`` checks all eight.

Choices where PyTorch and the official TensorFlow code differ, stated once:

* BatchNorm: ``momentum=0.01`` and ``eps=1e-3`` (the official ``decay=0.99``
  of a moving average that keeps 0.99 of the old value, and its epsilon);
* initialisation as in the official code: conv weights from a normal
  distribution truncated at two standard deviations with
  :math:`\\sigma = \\sqrt{2 / (k^2 C_{out})}`; FC weights uniform in
  :math:`\\pm\\sqrt{3 / d_{in}}` (TensorFlow's ``uniform_unit_scaling``); biases
  and BN shifts 0, BN scales 1;
* padding: PyTorch pads a stride-2 3x3 convolution symmetrically (one pixel
  each side); TensorFlow's ``SAME`` pads (0, 1) on even inputs. Shapes and
  parameter counts are the same; the pixels a strided kernel sees differ by
  one row and column;
* average pooling uses ``ceil_mode=True`` so that an odd input size (the
  models accept any size of at least 8x8, e.g. the 8x8 digits of
  scikit-learn) shrinks like the strided convolution beside it; on even sizes
  it is the official ``VALID`` pooling.

Every builder takes ``num_classes`` and ``in_channels``; RevNets also take
``mode`` (``"reversible"``, ``"autograd"`` or ``"checkpoint"``), which
:func:`set_mode` or the model's ``mode`` property change later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.couplings import AdditiveCoupling
from ..core.modes import CheckpointedModule, Mode, ModelMode
from ..core.sequence import ReversibleSequence
from .common import batch_norm, conv2d, init_official, pool_pad

__all__ = [
    "basic_branch",
    "bottleneck_branch",
    "PoolPadShortcut",
    "projection_shortcut",
    "ResidualUnit",
    "RevTransition",
    "RevStage",
    "PreActNet",
    "resnet32",
    "resnet110",
    "resnet164",
    "revnet38",
    "revnet110",
    "revnet164",
    "resnet101",
    "revnet104",
    "CIFAR_CONFIGS",
    "IMAGENET_CONFIGS",
]


def basic_branch(in_c: int, out_c: int, stride: int = 1, preact: bool = True) -> nn.Sequential:
    """BN-ReLU-conv3x3 (stride), BN-ReLU-conv3x3; without the first BN-ReLU if ``preact`` is
    False."""
    layers: list[nn.Module] = [batch_norm(in_c), nn.ReLU()] if preact else []
    layers += [
        conv2d(in_c, out_c, 3, stride),
        batch_norm(out_c),
        nn.ReLU(),
        conv2d(out_c, out_c, 3),
    ]
    return nn.Sequential(*layers)


def bottleneck_branch(in_c: int, out_c: int, stride: int = 1, preact: bool = True) -> nn.Sequential:
    """BN-ReLU-conv1x1 (stride), BN-ReLU-conv3x3, BN-ReLU-conv1x1; inner width ``out_c // 4``."""
    if out_c % 4:
        raise ValueError(f"bottleneck_branch: out_c must be a multiple of 4, got {out_c}")
    mid = out_c // 4
    layers: list[nn.Module] = [batch_norm(in_c), nn.ReLU()] if preact else []
    layers += [
        conv2d(in_c, mid, 1, stride),
        batch_norm(mid),
        nn.ReLU(),
        conv2d(mid, mid, 3),
        batch_norm(mid),
        nn.ReLU(),
        conv2d(mid, out_c, 1),
    ]
    return nn.Sequential(*layers)


class PoolPadShortcut(nn.Module):
    """:func:`pool_pad` as a module (no parameters)."""

    def __init__(self, stride: int, out_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return pool_pad(x, self.stride, self.out_channels)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, out_channels={self.out_channels}"


def projection_shortcut(in_c: int, out_c: int, stride: int = 1) -> nn.Module:
    """A 1x1 convolution with the stride when the shape changes, else the identity."""
    if stride > 1 or in_c != out_c:
        return conv2d(in_c, out_c, 1, stride)
    return nn.Identity()


def _shortcut(block: str, in_c: int, out_c: int, stride: int) -> nn.Module:
    if block == "basic":
        if stride == 1 and in_c == out_c:
            return nn.Identity()
        return PoolPadShortcut(stride, out_c)
    return projection_shortcut(in_c, out_c, stride)


def _branch(
    block: str, in_c: int, out_c: int, stride: int = 1, preact: bool = True
) -> nn.Sequential:
    if block == "basic":
        return basic_branch(in_c, out_c, stride, preact)
    if block == "bottleneck":
        return bottleneck_branch(in_c, out_c, stride, preact)
    raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")


class ResidualUnit(nn.Module):
    """A pre-activation residual unit: ``branch(x) + shortcut(x)``."""

    def __init__(
        self, block: str, in_c: int, out_c: int, stride: int = 1, preact: bool = True
    ) -> None:
        super().__init__()
        self.branch = _branch(block, in_c, out_c, stride, preact)
        self.shortcut = _shortcut(block, in_c, out_c, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.branch(x) + self.shortcut(x)


class RevTransition(CheckpointedModule):
    """The shape-changing first unit of a RevNet stage (not invertible).

    ``y1 = s1(x1) + F(x2)``, ``y2 = s2(x2) + G(y1)``: F has the stride and the
    new width, and each half's shortcut ``s1``, ``s2`` pools and pads (basic)
    or projects (bottleneck). In modes ``"reversible"`` and ``"checkpoint"`` only
    its input is stored and its inside recomputed in the backward (what the
    official code does); in mode ``"autograd"`` autograd stores everything.
    """

    def __init__(
        self,
        block: str,
        in_c: int,
        out_c: int,
        stride: int = 1,
        preact: bool = True,
        mode: Mode = "reversible",
    ) -> None:
        super().__init__(mode)
        if in_c % 2 or out_c % 2:
            raise ValueError(f"RevTransition: channel counts must be even, got {in_c} -> {out_c}")
        self.F = _branch(block, in_c // 2, out_c // 2, stride, preact)
        self.G = _branch(block, out_c // 2, out_c // 2, 1, True)
        self.shortcut1 = _shortcut(block, in_c // 2, out_c // 2, stride)
        self.shortcut2 = _shortcut(block, in_c // 2, out_c // 2, stride)

    def compute(self, x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=1)
        y1 = self.shortcut1(x1) + self.F(x2)
        y2 = self.shortcut2(x2) + self.G(y1)
        return torch.cat([y1, y2], dim=1)


class RevStage(nn.Module):
    """One RevNet stage: an optional :class:`RevTransition`, then a
    :class:`~revlib.ReversibleSequence`."""

    def __init__(
        self, transition: RevTransition | None, blocks: list[AdditiveCoupling], mode: Mode
    ) -> None:
        super().__init__()
        self.transition = transition
        self.blocks = ReversibleSequence(blocks, mode=mode, ndim=4)

    def forward(self, x: Tensor) -> Tensor:
        if self.transition is not None:
            x = self.transition(x)
        return self.blocks(x)


class PreActNet(ModelMode, nn.Module):
    """A pre-activation ResNet (``reversible=False``) or RevNet (``reversible=True``).

    Args:
        block: ``"basic"`` or ``"bottleneck"``.
        units: residual units per stage, e.g. ``(5, 5, 5)``.
        channels: the stem's width, then each stage's width as in the official
            configs (``[16, 16, 32, 64]`` for ResNet-32); bottleneck stages are
            4 times wider than listed, as there.
        strides: the first unit's stride in each stage.
        num_classes, in_channels: sizes of the output and of the input images.
        stem: ``"cifar"`` (3x3 conv, stride 1) or ``"imagenet"`` (7x7 conv,
            stride 2, then 3x3 stride-2 max pooling).
        mode: the RevNet's backward mode (ignored by a ResNet, which is always
            plain autograd).

    The attributes are ``stem``, ``stages`` (a ModuleList) and ``head``.
    """

    def __init__(
        self,
        block: str,
        units: Sequence[int],
        channels: Sequence[int],
        strides: Sequence[int],
        *,
        reversible: bool,
        num_classes: int = 10,
        in_channels: int = 3,
        stem: str = "cifar",
        mode: Mode = "reversible",
    ) -> None:
        super().__init__()
        if len(channels) != len(units) + 1 or len(strides) != len(units):
            raise ValueError("PreActNet: need len(channels) == len(units) + 1 == len(strides) + 1")
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"PreActNet: block must be 'basic' or 'bottleneck', got {block!r}")
        self.block = block
        self.reversible = reversible
        self.units = tuple(units)
        widths = [channels[0]] + [c * (4 if block == "bottleneck" else 1) for c in channels[1:]]
        self.widths = tuple(widths)

        if stem == "cifar":
            stem_layers: list[nn.Module] = [conv2d(in_channels, widths[0], 3)]
        elif stem == "imagenet":
            stem_layers = [nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)]
        else:
            raise ValueError(f"PreActNet: stem must be 'cifar' or 'imagenet', got {stem!r}")
        stem_layers += [batch_norm(widths[0]), nn.ReLU()]
        if stem == "imagenet":
            stem_layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem_layers)

        self.stages = nn.ModuleList()
        for s, (n, stride) in enumerate(zip(units, strides, strict=True)):
            in_c, out_c = widths[s], widths[s + 1]
            if reversible:
                self.stages.append(
                    self._rev_stage(block, n, in_c, out_c, stride, first=(s == 0), mode=mode)
                )
            else:
                layers = [ResidualUnit(block, in_c, out_c, stride, preact=(s != 0))]
                layers += [ResidualUnit(block, out_c, out_c) for _ in range(n - 1)]
                self.stages.append(nn.Sequential(*layers))

        self.head = nn.Sequential(
            batch_norm(widths[-1]),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(widths[-1], num_classes),
        )
        init_official(self)

    @staticmethod
    def _rev_stage(
        block: str, n: int, in_c: int, out_c: int, stride: int, first: bool, mode: Mode
    ) -> RevStage:
        preact = not first
        transition = None
        blocks = []
        half = out_c // 2
        if stride > 1 or in_c != out_c:
            transition = RevTransition(block, in_c, out_c, stride, preact=preact, mode=mode)
        else:
            # Same shape: the first unit is an ordinary (invertible) coupling.
            blocks.append(
                AdditiveCoupling(_branch(block, half, half, 1, preact), _branch(block, half, half))
            )
        while len(blocks) + (transition is not None) < n:
            blocks.append(AdditiveCoupling(_branch(block, half, half), _branch(block, half, half)))
        return RevStage(transition, blocks, mode)

    def _check_mode(self, mode: Mode) -> None:
        if not self.reversible and mode != "autograd":
            raise ValueError("PreActNet: a ResNet has only mode 'autograd'")

    def features(self, x: Tensor) -> Tensor:
        """The last stage's output, before the final BN-ReLU."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# The official configurations: block, units per stage, channels (stem, stages), strides.
CIFAR_CONFIGS: dict[str, dict[str, Any]] = {
    "resnet32": dict(block="basic", units=(5, 5, 5), channels=(16, 16, 32, 64), reversible=False),
    "resnet110": dict(
        block="basic", units=(18, 18, 18), channels=(16, 16, 32, 64), reversible=False
    ),
    "resnet164": dict(
        block="bottleneck", units=(18, 18, 18), channels=(16, 16, 32, 64), reversible=False
    ),
    "revnet38": dict(block="basic", units=(3, 3, 3), channels=(32, 32, 64, 112), reversible=True),
    "revnet110": dict(block="basic", units=(9, 9, 9), channels=(32, 32, 64, 128), reversible=True),
    "revnet164": dict(
        block="bottleneck", units=(9, 9, 9), channels=(32, 32, 64, 128), reversible=True
    ),
}
IMAGENET_CONFIGS: dict[str, dict[str, Any]] = {
    "resnet101": dict(
        block="bottleneck", units=(3, 4, 23, 3), channels=(64, 64, 128, 256, 512), reversible=False
    ),
    "revnet104": dict(
        block="bottleneck", units=(2, 2, 11, 2), channels=(128, 128, 256, 512, 832), reversible=True
    ),
}


def _cifar(name: str, num_classes: int, in_channels: int, mode: Mode = "reversible") -> PreActNet:
    cfg = CIFAR_CONFIGS[name]
    return PreActNet(
        strides=(1, 2, 2),
        num_classes=num_classes,
        in_channels=in_channels,
        stem="cifar",
        mode=mode,
        **cfg,
    )


def _imagenet(
    name: str, num_classes: int, in_channels: int, mode: Mode = "reversible"
) -> PreActNet:
    cfg = IMAGENET_CONFIGS[name]
    return PreActNet(
        strides=(1, 2, 2, 2),
        num_classes=num_classes,
        in_channels=in_channels,
        stem="imagenet",
        mode=mode,
        **cfg,
    )


def resnet32(num_classes: int = 10, in_channels: int = 3) -> PreActNet:
    """ResNet-32 (basic, 5-5-5, widths 16-16-32-64): 464,154 parameters at 10 classes."""
    return _cifar("resnet32", num_classes, in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> PreActNet:
    """ResNet-110 (basic, 18-18-18, widths 16-16-32-64): 1,727,962 parameters at 10 classes."""
    return _cifar("resnet110", num_classes, in_channels)


def resnet164(num_classes: int = 10, in_channels: int = 3) -> PreActNet:
    """ResNet-164 (bottleneck, 18-18-18, widths 16-64-128-256): 1,703,258 parameters at 10
    classes."""
    return _cifar("resnet164", num_classes, in_channels)


def revnet38(num_classes: int = 10, in_channels: int = 3, mode: Mode = "reversible") -> PreActNet:
    """RevNet-38 (basic, 3-3-3, widths 32-32-64-112): 464,890 parameters at 10 classes."""
    return _cifar("revnet38", num_classes, in_channels, mode)


def revnet110(num_classes: int = 10, in_channels: int = 3, mode: Mode = "reversible") -> PreActNet:
    """RevNet-110 (basic, 9-9-9, widths 32-32-64-128): 1,729,194 parameters at 10 classes."""
    return _cifar("revnet110", num_classes, in_channels, mode)


def revnet164(num_classes: int = 10, in_channels: int = 3, mode: Mode = "reversible") -> PreActNet:
    """RevNet-164 (bottleneck, 9-9-9, widths 32-128-256-512): 1,748,778 parameters at 10 classes."""
    return _cifar("revnet164", num_classes, in_channels, mode)


def resnet101(num_classes: int = 1000, in_channels: int = 3) -> PreActNet:
    """ResNet-101 for ImageNet (bottleneck, 3-4-23-3, widths 64-256-512-1024-2048): 44,541,480
    parameters."""
    return _imagenet("resnet101", num_classes, in_channels)


def revnet104(
    num_classes: int = 1000, in_channels: int = 3, mode: Mode = "reversible"
) -> PreActNet:
    """RevNet-104 for ImageNet (bottleneck, 2-2-11-2, widths 128-512-1024-2048-3328): 45,428,072
    parameters."""
    return _imagenet("revnet104", num_classes, in_channels, mode)
