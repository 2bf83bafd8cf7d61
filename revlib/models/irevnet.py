r"""An i-RevNet-style classifier (Jacobsen et al. 2018): reversible from the first layer to the
head.

Where a RevNet (Gomez et al. 2017) changes resolution with a pooling,
non-invertible transition whose input is stored, the i-RevNet changes it with
the space-to-depth bijection :math:`\psi` (:class:`~revlib.core.downsampling.SpaceToDepth`):

* stem: :math:`\psi` with ``stem_factor`` (3 channels -> 12; 1 -> 4), then an
  optional :class:`~revlib.core.downsampling.InjectivePad` of ``pad`` zero
  channels (the i-RevNet's injective variant; also makes an odd count even),
  put *first* (see "Off ReLU's kink" below);
* stage ``s``: :math:`\psi` (stride 2, channels x4) except in the first stage,
  then ``units[s]`` :class:`~revlib.core.couplings.AdditiveCoupling`\ s with
  pre-activation branches on half the channels: basic (two 3x3 convolutions)
  or the i-RevNet's bottleneck (:func:`irevnet_bottleneck_branch`);
* head (the only non-invertible part): BN-ReLU, global average pooling, linear.

Everything from the stem to the last coupling is **one**
:class:`~revlib.core.sequence.ReversibleSequence`, so mode ``"reversible"``
stores only its output, and :math:`\psi` keeps the number of entries
:math:`C H W`: the bytes saved do not depend on the depth nor on the number of stages.
The paper's block is a coupling with one branch and a swap; here both halves
get a branch (F and G), as in a RevNet.

**Off ReLU's kink.** A padded channel is exactly zero, so a BatchNorm maps it
to its bias, 0 at initialisation, exactly on the kink of the ReLU after it:
there the reversible backward, whose reconstructed zeros are zero only to
rounding, and autograd (which takes ReLU's slope at 0 as 0) give that bias
different gradients. So the zeros go in front of the stem's channels, into the
first coupling's first half, which that coupling only adds to
(:math:`y_1 = x_1 + F(x_2)`): with ``pad`` at most the stem's channels (``pad=1``
for an odd count, the few channels a bottleneck needs) no branch ever reads an
exact zero. With more padding than that, some zeros reach :math:`x_2`; the
first coupling's F then starts with its convolution, without the BN-ReLU in
front, as the official code's first block does, and the convolution mixes them
with the stem's channels. ``tests/models/test_irevnet_vit.py`` counts the
exact zeros that enter a ReLU (none) and compares the gradients with autograd's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from torch import Tensor, nn

from ..core.blocks import ReversibleBlock
from ..core.couplings import AdditiveCoupling
from ..core.downsampling import InjectivePad, SpaceToDepth
from ..core.modes import Mode, ModelMode, validate_mode
from ..core.sequence import ReversibleSequence
from .common import batch_norm, conv2d, init_official
from .revnet import PreActNet, basic_branch

__all__ = ["IRevNet", "matching_revnet", "irevnet_bottleneck_branch"]


def irevnet_bottleneck_branch(channels: int, mult: int = 4, preact: bool = True) -> nn.Sequential:
    """The i-RevNet's bottleneck branch (Jacobsen et al. 2018, official code), shape-preserving.

    BN-ReLU-conv3x3 to ``channels // mult``, BN-ReLU-conv3x3, BN-ReLU-conv3x3
    back to ``channels``: three 3x3 convolutions, unlike a ResNet bottleneck's
    1x1-3x3-1x1. ``preact=False`` omits the first BN-ReLU, as the official
    first block does; :class:`IRevNet` does so only where padded zeros reach
    the first branch.
    """
    if channels % mult:
        raise ValueError(
            f"irevnet_bottleneck_branch: {channels} channels do not divide by mult={mult}; the "
            "inner width is channels // mult (pad the stem with IRevNet(pad=...) or use "
            "branch='basic')"
        )
    mid = channels // mult
    front: list[nn.Module] = [batch_norm(channels), nn.ReLU()] if preact else []
    return nn.Sequential(
        *front,
        conv2d(channels, mid, 3),
        batch_norm(mid),
        nn.ReLU(),
        conv2d(mid, mid, 3),
        batch_norm(mid),
        nn.ReLU(),
        conv2d(mid, channels, 3),
    )


class IRevNet(ModelMode, nn.Module):
    """A fully invertible classifier: one ReversibleSequence from the stem's psi to the head.

    Args:
        units: couplings per stage, e.g. ``(2, 2, 2)``.
        in_channels: channels of the input images.
        num_classes: outputs of the head.
        stem_factor: the stem's space-to-depth factor (1: no stem psi).
        pad: zero channels put in front of the stem's channels (injective
            padding), where no branch reads them if ``pad`` is at most the
            stem's channels; beyond that the first coupling's F has no first
            BN-ReLU (the module docstring, "Off ReLU's kink").
        branch: ``"basic"`` (two 3x3 convolutions, the default) or
            ``"bottleneck"`` (:func:`irevnet_bottleneck_branch`; half of every stage's
            width must divide by 4).
        mode: backward mode of the sequence.

    Attributes: ``sequence``, ``head`` and ``widths`` (channels per stage).
    """

    def __init__(
        self,
        units: Sequence[int] = (2, 2, 2),
        in_channels: int = 3,
        num_classes: int = 10,
        stem_factor: int = 2,
        pad: int = 0,
        branch: Literal["basic", "bottleneck"] = "basic",
        mode: Mode = "reversible",
    ) -> None:
        super().__init__()
        validate_mode("IRevNet", mode)
        branches: dict[str, Callable[..., nn.Sequential]] = {
            "basic": lambda half, preact=True: basic_branch(half, half, preact=preact),
            "bottleneck": irevnet_bottleneck_branch,
        }
        if branch not in branches:
            raise ValueError(f"IRevNet: branch must be 'basic' or 'bottleneck', got {branch!r}")
        blocks: list[ReversibleBlock] = []
        c = in_channels
        if stem_factor > 1:
            blocks.append(SpaceToDepth(stem_factor))
            c *= stem_factor**2
        # Zeros beyond the first half reach the first F: then it starts with its convolution.
        first_preact = pad <= c
        if pad:
            blocks.append(InjectivePad(pad, at="start"))
            c += pad
        if c % 2:
            raise ValueError(
                f"IRevNet: the stem gives {c} channels (in_channels={in_channels}, "
                f"stem_factor={stem_factor}, pad={pad}); couplings need an even count: use "
                "stem_factor=2, or pad=1 (a zero channel put first, where the first coupling "
                "adds to it and no branch reads it, so no ReLU sits on its kink)"
            )
        widths = []
        for s, n in enumerate(units):
            if s > 0:
                blocks.append(SpaceToDepth(2))
                c *= 4
            widths.append(c)
            half = c // 2
            if branch == "bottleneck" and half % 4:
                raise ValueError(
                    f"IRevNet: stage {s} has {c} channels, halves of {half}, which a bottleneck "
                    "branch cannot divide by 4; add pad= channels after the stem or use "
                    "branch='basic'"
                )
            make = branches[branch]
            for _ in range(n):
                first = not any(isinstance(b, AdditiveCoupling) for b in blocks)
                f = make(half, preact=first_preact or not first)
                blocks.append(AdditiveCoupling(f, make(half)))
        self.widths = tuple(widths)
        self.units = tuple(units)
        self.sequence = ReversibleSequence(blocks, mode=mode, ndim=4)
        self.head = nn.Sequential(
            batch_norm(c),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c, num_classes),
        )
        init_official(self)

    def features(self, x: Tensor) -> Tensor:
        """The output of the invertible part (from which ``sequence.inverse`` recovers ``x``)."""
        return self.sequence(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def matching_revnet(
    units: Sequence[int] = (2, 2, 2),
    in_channels: int = 3,
    num_classes: int = 10,
    stem_factor: int = 2,
    mode: Mode = "reversible",
) -> PreActNet:
    """A RevNet with the widths and resolutions of ``IRevNet(units, in_channels, stem_factor=...)``.

    Its stem is a 3x3 convolution to the i-RevNet's first width; every stage
    starts with a stride-2 pooling transition (the first one stands in for the
    stem's psi) and quadruples the channels after the first, as psi does.
    """
    c0 = in_channels * stem_factor**2
    channels = [c0] + [c0 * 4**s for s in range(len(units))]
    strides = [stem_factor] + [2] * (len(units) - 1)
    return PreActNet(
        "basic",
        units,
        channels,
        strides,
        reversible=True,
        num_classes=num_classes,
        in_channels=in_channels,
        mode=mode,
    )
