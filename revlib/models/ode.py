"""Hamiltonian, Midpoint and Leapfrog networks after Chang et al. (2018).

Layout (Chang et al.'s Figure, and their TensorFlow code for the Hamiltonian
network, ``changebo/revnet-public``, ``hamiltonian_model.py``): a stem
(3x3 conv without bias, BN, ReLU), three stages of reversible blocks joined by
stride-2 average pooling and symmetric zero-padding of the channels, then BN,
ReLU, global average pooling and a fully connected layer. Global pooling makes
any input of at least 8x8 work (e.g. scikit-learn's 8x8 digits).

* **Hamiltonian** blocks (:class:`revlib.core.ode.hamiltonian.HamiltonianBlock`) act on a state
  of ``width`` channels, split into ``Y`` and ``Z``; each K is a 3x3 kernel
  from ``width/2`` to ``width/2`` channels with one bias, no BN inside.
* **Midpoint / Leapfrog** blocks act on the pair :math:`(Y_{j-1}, Y_j)`; the
  table's width is that of one state :math:`Y_j` (the stem's output), so the
  pair holds twice as many channels and each K is a ``width x width`` 3x3
  kernel with a bias. The pair is formed once after the stem by the first-step
  rule :math:`Y_{-1} = Y_0` (:func:`revlib.core.ode.twostep.start_pair`), kept through the
  stage transitions (both states pooled and padded alike) and reduced to
  :math:`Y_N` before the head (:func:`revlib.core.ode.twostep.end_pair`).

Where the transition sits (``transition=``):

* ``"in_first_block"`` (default; Chang et al.'s code): the first block of
  stages 2 and 3 still runs at the previous stage's width and resolution, and
  the pooling and padding follow it. This is the layout whose counts match
  Chang et al.'s table for Hamiltonian-74 and -218.
* ``"between_stages"``: every block of a stage runs at the stage's width (the
  paper's figure read literally). Hamiltonian-1202's published 9.70 M matches
  this layout, not the other.

Each run of equal-width blocks is one :class:`revlib.ReversibleSequence`, so in
mode ``"reversible"`` the network stores the stem's activations, one tensor per
sequence and the head's, whatever the depth. The transitions have no
parameters and save nothing of their own (pooling keeps a reference to the
sequence output that is saved anyway).

The step size ``h`` defaults to 0.1, the value hard-coded in Lili Meng's
``hamiltonian-revnet`` code (the later ``revnet-public`` config sets
``h = 1.0``); see the chapter for why 1.0 is unstable at initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from ..core.blocks import ReversibleBlock
from ..core.modes import Mode, ModelMode
from ..core.ode import EndPair, HamiltonianBlock, LeapfrogBlock, MidpointBlock, StartPair
from ..core.sequence import ReversibleSequence
from .common import batch_norm, conv2d, init_official, pool_pad

__all__ = [
    "ODENet",
    "HalfPoolPad",
    "CHANG_CONFIGS",
    "CHANG_PARAMS_M",
    "hamiltonian74",
    "hamiltonian218",
    "hamiltonian1202",
    "midpoint26",
    "midpoint62",
    "leapfrog26",
    "leapfrog62",
]

Scheme = Literal["hamiltonian", "midpoint", "leapfrog"]
Transition = Literal["in_first_block", "between_stages"]

_BLOCKS = {"hamiltonian": HamiltonianBlock, "midpoint": MidpointBlock, "leapfrog": LeapfrogBlock}


class HalfPoolPad(nn.Module):
    """Stage transition on a two-half state: :func:`~revlib.models.common.pool_pad` on each half.

    Each half (``Y`` and ``Z``, or :math:`Y_{j-1}` and :math:`Y_j`) is average
    pooled by ``stride`` and zero-padded symmetrically to ``out_half``
    channels, as the official code does to ``y1`` and ``y2``. No parameters.
    """

    def __init__(self, out_half: int, stride: int = 2) -> None:
        super().__init__()
        self.out_half = out_half
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat(
            [pool_pad(a, self.stride, self.out_half), pool_pad(b, self.stride, self.out_half)],
            dim=1,
        )

    def extra_repr(self) -> str:
        return f"out_half={self.out_half}, stride={self.stride}"


class ODENet(ModelMode, nn.Module):
    """A three-stage network of Hamiltonian, Midpoint or Leapfrog blocks.

    Args:
        scheme: ``"hamiltonian"``, ``"midpoint"`` or ``"leapfrog"``.
        units: blocks per stage, e.g. ``(6, 6, 6)``.
        widths: each stage's width, e.g. ``(32, 64, 112)``; the stem outputs ``widths[0]``.
        num_classes, in_channels: sizes of the output and of the input images.
        mode: backward mode of every :class:`~revlib.ReversibleSequence`.
        h: step size of every block (fixed).
        activation: sigma inside the blocks (``"relu"`` as in Chang et al.).
        transition: ``"in_first_block"`` (Chang et al.'s code) or ``"between_stages"``.

    Attributes: ``stem``, ``start`` (the first-step rule or the identity),
    ``sequences`` and ``transitions`` (ModuleLists; a transition follows every
    sequence but the last), ``end``, ``head``.
    """

    def __init__(
        self,
        scheme: Scheme,
        units: Sequence[int],
        widths: Sequence[int],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        mode: Mode = "reversible",
        h: float = 0.1,
        activation: str = "relu",
        transition: Transition = "in_first_block",
    ) -> None:
        super().__init__()
        if scheme not in _BLOCKS:
            raise ValueError(f"ODENet: scheme must be one of {sorted(_BLOCKS)}, got {scheme!r}")
        if len(units) != len(widths) or not units or min(units) < 1:
            raise ValueError(
                f"ODENet: need one width per stage and at least one block per stage, got {units}, "
                f"{widths}"
            )
        if transition not in ("in_first_block", "between_stages"):
            raise ValueError(
                "ODENet: transition must be 'in_first_block' or 'between_stages', got "
                f"{transition!r}"
            )
        self.scheme, self.units, self.widths, self.transition = (
            scheme,
            tuple(units),
            tuple(widths),
            transition,
        )
        two_step = scheme != "hamiltonian"
        block = _BLOCKS[scheme]

        self.stem = nn.Sequential(
            conv2d(in_channels, widths[0], 3), batch_norm(widths[0]), nn.ReLU()
        )
        self.start = StartPair() if two_step else nn.Identity()

        # Which width each block of each stage runs at.
        per_seq: list[list[ReversibleBlock]] = [[] for _ in widths]
        self._stage_of: list[list[tuple[int, int]]] = [[] for _ in widths]
        for s, n in enumerate(units):
            for j in range(n):
                seq = s - 1 if (transition == "in_first_block" and s > 0 and j == 0) else s
                self._stage_of[s].append((seq, len(per_seq[seq])))
                per_seq[seq].append(block(widths[seq], 3, h=h, activation=activation))
        self.sequences = nn.ModuleList(ReversibleSequence(b, mode=mode, ndim=4) for b in per_seq)
        # a two-step state is the pair (Y_{j-1}, Y_j), each of the stage's width; a Hamiltonian one
        # is Y, Z halves
        halves = 1 if two_step else 2
        self.transitions = nn.ModuleList(HalfPoolPad(w // halves) for w in widths[1:])

        self.end = EndPair() if two_step else nn.Identity()
        self.head = nn.Sequential(
            batch_norm(widths[-1]),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(widths[-1], num_classes),
        )
        init_official(
            self
        )  # stem conv and FC; the blocks' kernels are initialised the same way already

    def stages(self) -> list[list[nn.Module]]:
        """The blocks of each stage (Chang et al.'s "units"), in order, for
        :func:`revlib.core.smoothness.weight_smoothness`."""
        # self.sequences holds the ReversibleSequences __init__ built
        return [
            [cast(ReversibleSequence, self.sequences[q]).blocks[i] for q, i in stage]
            for stage in self._stage_of
        ]

    def features(self, x: Tensor) -> Tensor:
        """The state after the last block (the newest state for the two-step schemes)."""
        x = self.start(self.stem(x))
        for k, seq in enumerate(self.sequences):
            x = seq(x)
            if k < len(self.transitions):
                x = self.transitions[k](x)
        return self.end(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def extra_repr(self) -> str:
        return (
            f"scheme={self.scheme!r}, units={self.units}, widths={self.widths}, "
            f"transition={self.transition!r}"
        )


CHANG_CONFIGS: dict[str, dict[str, Any]] = {
    "hamiltonian74": dict(scheme="hamiltonian", units=(6, 6, 6), widths=(32, 64, 112)),
    "hamiltonian218": dict(scheme="hamiltonian", units=(18, 18, 18), widths=(32, 64, 128)),
    "hamiltonian1202": dict(scheme="hamiltonian", units=(100, 100, 100), widths=(32, 64, 128)),
    "midpoint26": dict(scheme="midpoint", units=(4, 4, 4), widths=(32, 64, 112)),
    "midpoint62": dict(scheme="midpoint", units=(10, 10, 10), widths=(32, 64, 128)),
    "leapfrog26": dict(scheme="leapfrog", units=(4, 4, 4), widths=(32, 64, 112)),
    "leapfrog62": dict(scheme="leapfrog", units=(10, 10, 10), widths=(32, 64, 128)),
}
"""Units per stage and stage widths of Chang et al.'s Table (CIFAR)."""

CHANG_PARAMS_M: dict[str, tuple[float, float | None]] = {
    "hamiltonian74": (0.43, 0.44),
    "hamiltonian218": (1.68, 1.69),
    "hamiltonian1202": (9.70, None),
    "midpoint26": (0.50, 0.51),
    "midpoint62": (1.78, 1.79),
    "leapfrog26": (0.50, 0.51),
    "leapfrog62": (1.78, 1.79),
}
"""Chang et al.'s published parameter counts in millions, (CIFAR-10, CIFAR-100)."""


def _chang(name: str, num_classes: int, in_channels: int, mode: Mode, **kwargs: Any) -> ODENet:
    return ODENet(
        **CHANG_CONFIGS[name], num_classes=num_classes, in_channels=in_channels, mode=mode, **kwargs
    )


def hamiltonian74(
    num_classes: int = 10, in_channels: int = 3, mode: Mode = "reversible", **kwargs: Any
) -> ODENet:
    """Hamiltonian-74 (6-6-6, widths 32-64-112): 428,538 parameters at 10 classes
    (Chang et al.: 0.43 M)."""
    return _chang("hamiltonian74", num_classes, in_channels, mode, **kwargs)


def hamiltonian218(
    num_classes: int = 10, in_channels: int = 3, mode: Mode = "reversible", **kwargs: Any
) -> ODENet:
    """Hamiltonian-218 (18-18-18, widths 32-64-128): 1,679,114 parameters at 10 classes
    (Chang et al.: 1.68 M)."""
    return _chang("hamiltonian218", num_classes, in_channels, mode, **kwargs)


def hamiltonian1202(
    num_classes: int = 10, in_channels: int = 3, mode: Mode = "reversible", **kwargs: Any
) -> ODENet:
    """Hamiltonian-1202 (100-100-100, widths 32-64-128): 9,632,458 parameters at 10 classes
    (Chang et al.: 9.70 M)."""
    return _chang("hamiltonian1202", num_classes, in_channels, mode, **kwargs)


def midpoint26(
    num_classes: int = 10, in_channels: int = 3, mode: Mode = "reversible", **kwargs: Any
) -> ODENet:
    """MidPoint-26 (4-4-4, widths 32-64-112): 535,258 parameters at 10 classes
    (Chang et al.: 0.50 M)."""
    return _chang("midpoint26", num_classes, in_channels, mode, **kwargs)


def midpoint62(
    num_classes: int = 10, in_channels: int = 3, mode: Mode = "reversible", **kwargs: Any
) -> ODENet:
    """MidPoint-62 (10-10-10, widths 32-64-128): 1,801,738 parameters at 10 classes
    (Chang et al.: 1.78 M)."""
    return _chang("midpoint62", num_classes, in_channels, mode, **kwargs)


def leapfrog26(
    num_classes: int = 10, in_channels: int = 3, mode: Mode = "reversible", **kwargs: Any
) -> ODENet:
    """Leapfrog-26 (4-4-4, widths 32-64-112): 535,258 parameters at 10 classes
    (Chang et al.: 0.50 M)."""
    return _chang("leapfrog26", num_classes, in_channels, mode, **kwargs)


def leapfrog62(
    num_classes: int = 10, in_channels: int = 3, mode: Mode = "reversible", **kwargs: Any
) -> ODENet:
    """Leapfrog-62 (10-10-10, widths 32-64-128): 1,801,738 parameters at 10 classes
    (Chang et al.: 1.78 M)."""
    return _chang("leapfrog62", num_classes, in_channels, mode, **kwargs)
