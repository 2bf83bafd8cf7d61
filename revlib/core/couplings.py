"""Coupling layers: the invertible building blocks of RevNet, NICE and Real NVP.

Every coupling splits its input ``x`` into halves ``x1, x2`` along one
dimension, ``dim``: 1 (the default) splits the channels of an image batch
(N, C, H, W) into C/2 each, and ``dim=-1`` splits the features of a token
batch (B, T, D) into D/2 each, as reversible transformers do. It changes one
half by a function of the other, and concatenates. The inverse needs only subtraction (and a
division for the affine coupling), never an inverse of F or G, so F and G may
be any shape-preserving networks.
"""

from __future__ import annotations

from typing import overload

import torch
from torch import Tensor, nn

from .blocks import (
    ParamGrads,
    ReversibleBlock,
    Run,
    check_same_shape,
    grads_for,
    run_with,
)
from .halves import Halves, halves_of_difference, join_halves, join_halves_with_sum, split_halves
from .replay import Tape

__all__ = ["AdditiveCoupling", "NICECoupling", "AffineCoupling", "HalfSwap"]


class AdditiveCoupling(ReversibleBlock):
    r"""The RevNet block (Gomez et al. 2017).

    .. math::
        y_1 = x_1 + F(x_2), \qquad y_2 = x_2 + G(y_1)

    with inverse :math:`x_2 = y_2 - G(y_1)`, :math:`x_1 = y_1 - F(x_2)`.
    Its backward step evaluates G and F once each (Algorithm 1 of the paper).
    """

    def __init__(self, F: nn.Module, G: nn.Module, dim: int = 1) -> None:
        super().__init__()
        self.F = F
        self.G = G
        self.dim = dim

    backward_step_takes_halves = True

    def _forward(self, x: Tensor, run: Run) -> Tensor:
        x1, x2 = split_halves(self, x)
        y1 = x1 + check_same_shape(self, "F", run("F", self.F, x2), x2)
        y2 = x2 + check_same_shape(self, "G", run("G", self.G, y1), y1)
        return join_halves(self, y1, y2)

    def _inverse(self, y: Tensor, run: Run) -> Tensor:
        y1, y2 = split_halves(self, y, "output")
        x2 = y2 - check_same_shape(self, "G", run("G", self.G, y1), y1)
        x1 = y1 - check_same_shape(self, "F", run("F", self.F, x2), x2)
        return join_halves(self, x1, x2)

    @overload
    def backward_step(
        self, y: Halves, dy: Tensor, tape: Tape
    ) -> tuple[Halves, Tensor, ParamGrads]: ...

    @overload
    def backward_step(
        self, y: Tensor, dy: Tensor, tape: Tape
    ) -> tuple[Tensor, Tensor, ParamGrads]: ...

    def backward_step(
        self, y: Tensor | Halves, dy: Tensor, tape: Tape
    ) -> tuple[Tensor | Halves, Tensor, ParamGrads]:
        r"""One step of Algorithm 1.

        With :math:`z_1 = y_1`:
        :math:`\bar z_1 = \bar y_1 + (\partial G/\partial z_1)^\top \bar y_2`,
        :math:`\bar x_2 = \bar y_2 + (\partial F/\partial x_2)^\top \bar z_1`,
        :math:`\bar x_1 = \bar z_1`, :math:`\bar w_G = (\partial G/\partial w_G)^\top \bar y_2`,
        :math:`\bar w_F = (\partial F/\partial w_F)^\top \bar z_1`.

        ``y`` may be :class:`~revlib.core.halves.Halves`; ``x`` is then
        returned as ``Halves`` too (:math:`x_1` and :math:`x_2`, contiguous), so a
        chain spends no concatenation on a tensor the next step splits again,
        nor a copy of :math:`y_1` for G. The results are bit for bit those of
        whole tensors.
        """
        halves = Halves.of(self, y)
        y1, y2 = halves.first.detach(), halves.second.detach()
        dy1, dy2 = dy.chunk(2, dim=self.dim)
        z1 = _as_forward_saw(y1).requires_grad_(True)
        g = tape.replay("G", self.G, z1)
        (dz1_from_g,), g_grads = grads_for([g], [dy2], [z1], tape.grad_targets(self.G))
        x2 = (y2 - g.detach()).requires_grad_(True)
        dz1 = dy1 if dz1_from_g is None else dy1 + dz1_from_g
        f = tape.replay("F", self.F, x2)
        (dx2_from_f,), f_grads = grads_for([f], [dz1], [x2], tape.grad_targets(self.F))
        x = halves_of_difference(self, halves, f.detach(), x2.detach())  # x1 = y1 - F(x2)
        dx = join_halves_with_sum(self, dz1, dy, dx2_from_f)  # dx2 = dy2 + (dF/dx2)^T dz1
        return (x if isinstance(y, Halves) else x.join()), dx, f_grads + g_grads


def _as_forward_saw(half: Tensor) -> Tensor:
    """``y_1`` in the layout the forward's G received, ``x_1 + F(x_2)``: contiguous, where the
    rebuilt output is a strided half of a full-size tensor. So G's replay runs the forward's
    kernels in the forward's order (on the strided half BatchNorm reduces in another order, and
    runs up to 1.7x slower on one CPU thread)."""
    return half.contiguous()


class NICECoupling(ReversibleBlock):
    r"""The additive coupling of NICE (Dinh et al. 2015).

    .. math::
        y_1 = x_1, \qquad y_2 = x_2 + m(x_1)

    with inverse :math:`x_2 = y_2 - m(y_1)` and Jacobian determinant 1.
    """

    def __init__(self, m: nn.Module, dim: int = 1) -> None:
        super().__init__()
        self.m = m
        self.dim = dim

    def _forward(self, x: Tensor, run: Run) -> Tensor:
        x1, x2 = split_halves(self, x)
        return join_halves(self, x1, x2 + check_same_shape(self, "m", run("m", self.m, x1), x1))

    def _inverse(self, y: Tensor, run: Run) -> Tensor:
        y1, y2 = split_halves(self, y, "output")
        return join_halves(self, y1, y2 - check_same_shape(self, "m", run("m", self.m, y1), y1))

    def backward_step(self, y: Tensor, dy: Tensor, tape: Tape) -> tuple[Tensor, Tensor, ParamGrads]:
        r""":math:`\bar x_1 = \bar y_1 + (\partial m/\partial x_1)^\top \bar y_2`,
        :math:`\bar x_2 = \bar y_2`."""
        y1, y2 = (h.detach() for h in split_halves(self, y, "output"))
        dy1, dy2 = dy.chunk(2, dim=self.dim)
        x1 = y1.requires_grad_(True)
        m = tape.replay("m", self.m, x1)
        (dx1_from_m,), grads = grads_for([m], [dy2], [x1], tape.grad_targets(self.m))
        dx1 = dy1 if dx1_from_m is None else dy1 + dx1_from_m
        x = join_halves(self, y1.detach(), y2 - m.detach())
        return x, join_halves(self, dx1, dy2), grads


class AffineCoupling(ReversibleBlock):
    r"""The affine coupling of Real NVP (Dinh et al. 2017).

    .. math::
        y_1 = x_1, \qquad y_2 = x_2 \odot \exp(s(x_1)) + t(x_1)

    ``net(x1)`` returns twice the size of ``x1`` along ``dim``, read as the raw
    scale and the shift ``t``. With ``scale_bound=b`` the scale is :math:`s = b \tanh(s_{raw}/b)`,
    so :math:`|s| < b` and the inverse :math:`x_2 = (y_2 - t) \odot \exp(-s)`
    cannot overflow. The log-determinant of the Jacobian is :math:`\sum s`.
    """

    def __init__(self, net: nn.Module, scale_bound: float | None = 2.0, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim
        if scale_bound is not None and scale_bound <= 0:
            raise ValueError(
                f"AffineCoupling: scale_bound must be positive or None, got {scale_bound}"
            )
        self.net = net
        self.scale_bound = scale_bound

    def _scale_shift(self, x1: Tensor, run: Run) -> tuple[Tensor, Tensor]:
        h = run("net", self.net, x1)
        doubled = list(x1.shape)
        doubled[self.dim] *= 2
        expected = tuple(doubled)
        if h.shape != expected:
            raise ValueError(
                f"AffineCoupling: net maps a half of shape {tuple(x1.shape)} to shape "
                f"{tuple(h.shape)}; it must return shape {expected} (scale and shift)"
            )
        s, t = h.chunk(2, dim=self.dim)
        if self.scale_bound is not None:
            s = self.scale_bound * torch.tanh(s / self.scale_bound)
        return s, t

    def _forward(self, x: Tensor, run: Run) -> Tensor:
        x1, x2 = split_halves(self, x)
        s, t = self._scale_shift(x1, run)
        return join_halves(self, x1, x2 * torch.exp(s) + t)

    def _inverse(self, y: Tensor, run: Run) -> Tensor:
        y1, y2 = split_halves(self, y, "output")
        s, t = self._scale_shift(y1, run)
        return join_halves(self, y1, (y2 - t) * torch.exp(-s))

    def forward_and_log_det(self, x: Tensor, **extras: object) -> tuple[Tensor, Tensor]:
        """``y`` and :math:`\\log|\\det \\partial y/\\partial x| = \\sum s(x_1)` per sample;
        ``extras`` (a conditioning tensor) reach ``net`` as in the forward."""
        x1, x2 = split_halves(self, x)
        s, t = self._scale_shift(x1, run_with(extras))
        y = join_halves(self, x1, x2 * torch.exp(s) + t)
        return y, s.flatten(1).sum(dim=1)

    def log_det(self, x: Tensor, **extras: object) -> Tensor:
        """The log-determinant of the Jacobian at ``x``, one value per sample."""
        return self.forward_and_log_det(x, **extras)[1]

    def backward_step(self, y: Tensor, dy: Tensor, tape: Tape) -> tuple[Tensor, Tensor, ParamGrads]:
        r"""Recompute ``s, t`` once; :math:`\bar x_2 = \bar y_2 \odot e^{s}` and
        :math:`\bar x_1 = \bar y_1 +
        (\partial (s,t)/\partial x_1)^\top (\bar y_2 \odot (y_2 - t), \bar y_2)`."""
        y1, y2 = (h.detach() for h in split_halves(self, y, "output"))
        dy1, dy2 = dy.chunk(2, dim=self.dim)
        x1 = y1.requires_grad_(True)
        s, t = self._scale_shift(x1, tape.replay)
        x2 = (y2 - t.detach()) * torch.exp(-s.detach())
        y2_again = x2 * torch.exp(s) + t
        (dx1_from_st,), grads = grads_for([y2_again], [dy2], [x1], tape.grad_targets(self.net))
        dx1 = dy1 if dx1_from_st is None else dy1 + dx1_from_st
        dx2 = dy2 * torch.exp(s.detach())
        return join_halves(self, y1.detach(), x2), join_halves(self, dx1, dx2), grads


class HalfSwap(ReversibleBlock):
    """Exchange the two halves: ``(x1, x2) -> (x2, x1)``; its own inverse.

    ``dim`` is the split dimension, as for the couplings.
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def _forward(self, x: Tensor, run: Run) -> Tensor:
        x1, x2 = split_halves(self, x)
        return join_halves(self, x2, x1)

    def _inverse(self, y: Tensor, run: Run) -> Tensor:
        return self._forward(y, run)

    def backward_step(self, y: Tensor, dy: Tensor, tape: Tape) -> tuple[Tensor, Tensor, ParamGrads]:
        dy1, dy2 = split_halves(self, dy, "gradient")
        return self._inverse(y.detach(), tape.replay), join_halves(self, dy2, dy1), []
