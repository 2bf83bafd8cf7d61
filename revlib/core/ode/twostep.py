r"""The two-step blocks, Midpoint and Leapfrog, on the pair :math:`(Y_{j-1}, Y_j)`.

:class:`TwoStepBlock` is the scheme
:math:`Y_{j+1} = \alpha Y_j + \beta Y_{j-1} + \gamma(h) F(Y_j)` with its inverse
and its fused backward step (F evaluated once); :class:`MidpointBlock` and
:class:`LeapfrogBlock` choose :math:`\alpha`, :math:`\beta` and F;
:func:`start_pair` and :func:`end_pair` enter and leave the pair (the
first-step rule is in :mod:`revlib.core.ode`'s docstring).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..blocks import ParamGrads, ReversibleBlock, Run, check_same_shape, grads_for
from ..halves import split_halves
from ..replay import Tape
from .kernels import AntisymmetricSigma, KTransposeSigmaK, StepScaled, kernel_weight, step_size

__all__ = [
    "TwoStepBlock",
    "MidpointBlock",
    "LeapfrogBlock",
    "start_pair",
    "end_pair",
    "StartPair",
    "EndPair",
]


class TwoStepBlock(ReversibleBlock):
    r"""A two-step scheme :math:`Y_{j+1} = \alpha Y_j + \beta Y_{j-1} + \gamma(h) F(Y_j)` on the
    pair.

    The input is :math:`(Y_{j-1}, Y_j)` as channel halves, the output
    :math:`(Y_j, Y_{j+1})`. :math:`\beta = \pm 1`, so the inverse is
    :math:`Y_{j-1} = \beta\,(Y_{j+1} - \alpha Y_j - \gamma F(Y_j))`. The fused
    backward step evaluates F once:
    :math:`\bar Y_{j-1} = \beta \bar Y_{j+1}`,
    :math:`\bar Y_j = \bar Y_j^{out} + \alpha \bar Y_{j+1} +
    (\partial(\gamma F)/\partial Y_j)^\top \bar Y_{j+1}`.
    Subclasses set ``alpha``, ``beta`` and ``self.F``, a
    :class:`~revlib.core.ode.kernels.StepScaled` holding :math:`\gamma(h)`.
    """

    alpha: float = 0.0
    beta: float = 1.0
    F: StepScaled

    @property
    def h(self) -> float | nn.Parameter:
        """The step size (a float, or a parameter when learned)."""
        return self.F.h

    def _forward(self, x: Tensor, run: Run) -> Tensor:
        prev, cur = split_halves(self, x)
        update = check_same_shape(self, "F", run("F", self.F, cur), cur)
        return torch.cat([cur, self._next(prev, cur, update)], dim=1)

    def _next(self, prev: Tensor, cur: Tensor, update: Tensor) -> Tensor:
        new = update + prev if self.beta == 1 else update - prev
        return new if self.alpha == 0 else new + self.alpha * cur

    def _previous(self, cur: Tensor, new: Tensor, update: Tensor) -> Tensor:
        rest = new - update if self.alpha == 0 else new - self.alpha * cur - update
        return rest if self.beta == 1 else -rest

    def _inverse(self, y: Tensor, run: Run) -> Tensor:
        cur, new = split_halves(self, y, "output")
        update = check_same_shape(self, "F", run("F", self.F, cur), cur)
        return torch.cat([self._previous(cur, new, update), cur], dim=1)

    def backward_step(self, y: Tensor, dy: Tensor, tape: Tape) -> tuple[Tensor, Tensor, ParamGrads]:
        cur, new = (t.detach() for t in split_halves(self, y, "output"))
        dcur_out, dnew = dy.chunk(2, dim=1)
        cur = cur.requires_grad_(True)
        update = tape.replay("F", self.F, cur)
        (dcur_from_f,), grads = grads_for([update], [dnew], [cur], tape.grad_targets(self.F))
        prev = self._previous(cur.detach(), new, update.detach())
        dprev = dnew if self.beta == 1 else -dnew
        dcur = dcur_out if self.alpha == 0 else dcur_out + self.alpha * dnew
        if dcur_from_f is not None:
            dcur = dcur + dcur_from_f
        return torch.cat([prev, cur.detach()], dim=1), torch.cat([dprev, dcur], dim=1), grads

    def kernels(self) -> dict[str, Tensor]:
        """The kernel a weight smoothness penalty compares across depth: ``K``."""
        return {"K": kernel_weight(self.F.fn)}


class MidpointBlock(TwoStepBlock):
    r"""Midpoint rule: :math:`Y_{j+1} = Y_{j-1} + 2h F(Y_j)`, inverse
    :math:`Y_{j-1} = Y_{j+1} - 2h F(Y_j)`.

    The default F is Haber and Ruthotto's antisymmetric layer
    :math:`\sigma((K - K^\top)Y + b)`
    (:class:`~revlib.core.ode.kernels.AntisymmetricSigma`): the midpoint rule is
    stable only when the Jacobian's eigenvalues are (close to) imaginary, and
    this F makes them so. Pass ``F=`` to use another shape-preserving module
    (e.g. a :class:`~revlib.core.ode.kernels.KTransposeSigmaK`).

    Args:
        channels: channels of one state :math:`Y_j`; the block's input (the pair) has twice as many.
        kernel_size: odd kernel size, or ``None`` for a dense K.
        h: step size, fixed unless ``learn_h=True``.
        activation, init_std: passed to the default F.
        F: the sub-function (without the factor :math:`2h`).
    """

    alpha = 0.0
    beta = 1.0

    def __init__(
        self,
        channels: int,
        kernel_size: int | None = 3,
        h: float = 0.1,
        activation: str | nn.Module = "relu",
        F: nn.Module | None = None,
        learn_h: bool = False,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        fn = (
            F
            if F is not None
            else AntisymmetricSigma(channels, kernel_size, True, activation, init_std)
        )
        self.F = StepScaled(fn, 2.0, 1, step_size(self, h, learn_h))

    def rhs(self, y: Tensor) -> Tensor:
        r"""The ODE's right-hand side :math:`F(Y)` at one state ``y`` (not a pair)."""
        out: Tensor = self.F.fn(y)
        return out


class LeapfrogBlock(TwoStepBlock):
    r"""Leapfrog for :math:`\ddot Y = -K^\top\sigma(K Y + b)`:
    :math:`Y_{j+1} = 2Y_j - Y_{j-1} - h^2 K^\top\sigma(K Y_j + b)`.

    Inverse :math:`Y_{j-1} = 2Y_j - Y_{j+1} - h^2 K^\top\sigma(K Y_j + b)`: the
    same formula run backwards (the scheme is time-symmetric).

    Args:
        channels: channels of one state :math:`Y_j`; the block's input (the pair) has twice as many.
        kernel_size: odd kernel size, or ``None`` for a dense K.
        h: step size, fixed unless ``learn_h=True``.
        hidden, activation, init_std: passed to :class:`~revlib.core.ode.kernels.KTransposeSigmaK`.
    """

    alpha = 2.0
    beta = -1.0

    def __init__(
        self,
        channels: int,
        kernel_size: int | None = 3,
        h: float = 0.1,
        hidden: int | None = None,
        activation: str | nn.Module = "relu",
        learn_h: bool = False,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        fn = KTransposeSigmaK(channels, hidden, kernel_size, True, activation, init_std)
        self.F = StepScaled(fn, -1.0, 2, step_size(self, h, learn_h))

    def rhs(self, x: Tensor) -> Tensor:
        r"""The first-order form's right-hand side :math:`(V, -K^\top\sigma(K Y + b))` at
        ``x = (Y, V)``."""
        y, v = split_halves(self, x)
        return torch.cat([v, -self.F.fn(y)], dim=1)


def start_pair(y0: Tensor) -> Tensor:
    r"""The first-step rule: the pair :math:`(Y_{-1}, Y_0) = (Y_0, Y_0)`, channels duplicated."""
    return torch.cat([y0, y0], dim=1)


def end_pair(pair: Tensor) -> Tensor:
    r"""Reduce a pair :math:`(Y_{N-1}, Y_N)` to the newest state :math:`Y_N`."""
    _, last = pair.chunk(2, dim=1)
    return last


class StartPair(nn.Module):
    """Module form of :func:`start_pair`."""

    def forward(self, x: Tensor) -> Tensor:
        return start_pair(x)


class EndPair(nn.Module):
    """Module form of :func:`end_pair`."""

    def forward(self, x: Tensor) -> Tensor:
        return end_pair(x)
