r"""Momentum residual networks (Sander et al. 2021): a ResNet with a velocity, invertible for
:math:`\gamma > 0`.

A momentum block carries a position :math:`x` and a velocity :math:`v` of the
same shape, the two halves of one tensor along ``dim``:

.. math::
    v' = \gamma v + (1 - \gamma) f(x), \qquad x' = x + v'.

Its inverse undoes the two updates in reverse order:

.. math::
    x = x' - v', \qquad v = \bigl(v' - (1 - \gamma) f(x)\bigr) / \gamma.

No inverse of :math:`f` is needed, so it is a coupling on :math:`(x, v)`; but the
division by :math:`\gamma` multiplies the rounding error in :math:`v` by
:math:`1/\gamma` per block, so over :math:`N` blocks the reconstruction error grows
like :math:`\gamma^{-N}`: a small :math:`\gamma` (close to a plain ResNet,
:math:`\gamma = 0`) costs exactness.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .blocks import (
    ParamGrads,
    ReversibleBlock,
    Run,
    check_same_shape,
    grads_for,
)
from .halves import join_halves, split_halves
from .modes import Mode, ModelMode
from .replay import Tape
from .sequence import ReversibleSequence

__all__ = ["MomentumBlock", "MomentumNet", "AMPLIFICATION_LIMIT"]

AMPLIFICATION_LIMIT = 1e3
r""":class:`MomentumNet` warns when :math:`\gamma^{-N}` exceeds this: float32's rounding
(:math:`1.2 \times 10^{-7}`) would grow past :math:`10^{-4}` in the rebuilt velocities."""


class MomentumBlock(ReversibleBlock):
    r"""One momentum residual step on :math:`(x, v)` (Sander et al. 2021).

    Args:
        f: the residual function, shape-preserving on one half.
        gamma: the momentum :math:`\gamma \in (0, 1]`; the inverse divides by it.
        dim: the dimension that holds ``(x, v)`` as two halves (1 for images,
            -1 for tokens).
    """

    def __init__(self, f: nn.Module, gamma: float = 0.9, dim: int = 1) -> None:
        super().__init__()
        if not 0.0 < gamma <= 1.0:
            raise ValueError(
                "MomentumBlock: gamma must be in (0, 1] for the block to be invertible, got "
                f"{gamma}"
            )
        self.f = f
        self.gamma = float(gamma)
        self.dim = dim

    def _forward(self, x: Tensor, run: Run) -> Tensor:
        pos, vel = split_halves(self, x)
        vel = self.gamma * vel + (1.0 - self.gamma) * check_same_shape(
            self, "f", run("f", self.f, pos), pos
        )
        return join_halves(self, pos + vel, vel)

    def _inverse(self, y: Tensor, run: Run) -> Tensor:
        pos_new, vel_new = split_halves(self, y, "output")
        pos = pos_new - vel_new
        f = check_same_shape(self, "f", run("f", self.f, pos), pos)
        return join_halves(self, pos, (vel_new - (1.0 - self.gamma) * f) / self.gamma)

    def backward_step(self, y: Tensor, dy: Tensor, tape: Tape) -> tuple[Tensor, Tensor, ParamGrads]:
        r"""Reconstruct :math:`(x, v)` and map the gradients back with one evaluation of :math:`f`.

        The velocity reaches the loss directly and through :math:`x' = x + v'`,
        so its total gradient is :math:`\bar s = \bar v' + \bar x'`; then
        :math:`\bar x = \bar x' + (1 - \gamma)(\partial f/\partial x)^\top \bar s`,
        :math:`\bar v = \gamma \bar s` and
        :math:`\bar w = (1 - \gamma)(\partial f/\partial w)^\top \bar s`, where
        :math:`x = x' - v'` needs no :math:`f` and :math:`f(x)` serves both the
        reconstruction of :math:`v` and the vector-Jacobian product.
        """
        pos_new, vel_new = (h.detach() for h in split_halves(self, y, "output"))
        dpos_new, dvel_new = dy.chunk(2, dim=self.dim)
        pos = (pos_new - vel_new).requires_grad_(True)
        f = check_same_shape(self, "f", tape.replay("f", self.f, pos), pos)
        dvel_total = dvel_new + dpos_new
        (dpos_from_f,), grads = grads_for(
            [f], [(1.0 - self.gamma) * dvel_total], [pos], tape.grad_targets(self.f)
        )
        vel = (vel_new - (1.0 - self.gamma) * f.detach()) / self.gamma
        dpos = dpos_new if dpos_from_f is None else dpos_new + dpos_from_f
        return (
            join_halves(self, pos.detach(), vel),
            join_halves(self, dpos, self.gamma * dvel_total),
            grads,
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, dim={self.dim}"


class MomentumNet(ModelMode, nn.Module):
    r"""A momentum ResNet: start at zero velocity, apply :class:`MomentumBlock`\ s, return the
    position.

    ``forward(x)`` is :math:`x_N` after :math:`N` blocks from :math:`(x_0, v_0) = (x, 0)`.
    ``sequence`` (a :class:`~revlib.core.sequence.ReversibleSequence`) maps the
    pair :math:`(x, 0)` to the final pair and stores only that in mode
    ``"reversible"``; ``sequence.inverse`` recovers :math:`(x, 0)` from it.
    """

    def __init__(
        self,
        functions: Iterable[nn.Module],
        gamma: float = 0.9,
        dim: int = 1,
        mode: Mode = "reversible",
        preserve_rng_state: bool | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        blocks = [MomentumBlock(f, gamma, dim) for f in functions]
        self._warned = False
        self.sequence = ReversibleSequence(blocks, mode=mode, preserve_rng_state=preserve_rng_state)

    def forward(self, x: Tensor) -> Tensor:
        if not self._warned and self.training and torch.is_grad_enabled():
            self._warn_if_inexact()
        pair = torch.cat([x, torch.zeros_like(x)], dim=self.dim)
        return split_halves(self, self.sequence(pair))[0]

    def _warn_if_inexact(self) -> None:
        """Warn, once, before a reversible training step whose rebuilt velocities would be
        inexact (the rounding error grows like gamma^-N)."""
        blocks = [b for b in self.sequence.blocks if isinstance(b, MomentumBlock)]
        if self.sequence.mode != "reversible" or not blocks:
            return
        self._warned = True
        gamma = min(b.gamma for b in blocks)
        growth = gamma ** -len(blocks)
        if growth > AMPLIFICATION_LIMIT:
            least = AMPLIFICATION_LIMIT ** (-1 / len(blocks))
            warnings.warn(
                f"MomentumNet: gamma={gamma} over {len(blocks)} blocks multiplies the rounding "
                f"error of the rebuilt velocities by up to gamma^-N = {growth:.1e} (float32: "
                f"about {growth * 1.2e-7:.0e}), so in mode='reversible' the gradients are "
                f"inexact. Use gamma >= {least:.3f} for this depth, float64, or "
                "mode='autograd'.",
                stacklevel=3,
            )
