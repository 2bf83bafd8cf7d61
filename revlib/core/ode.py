r"""Reversible blocks from ODE discretisations (Haber & Ruthotto 2017; Chang et al. 2018).

A residual block :math:`Y_{j+1} = Y_j + h F(Y_j)` is a forward Euler step of
:math:`\dot Y = F(Y)`. Choosing the ODE and the integrator well gives blocks
that are exactly invertible and, for the Hamiltonian and the second-order
systems, stable (Jacobian eigenvalues on the imaginary axis):

* :class:`HamiltonianBlock`, the two-layer Hamiltonian network of Chang et al.
  integrated with Verlet, on the channel halves ``(Y, Z)``:

  .. math::
      Y \leftarrow Y + h K_1^\top \sigma(K_1 Z + b_1), \qquad
      Z \leftarrow Z - h K_2^\top \sigma(K_2 Y + b_2).

* :class:`MidpointBlock`: :math:`Y_{j+1} = Y_{j-1} + 2h F(Y_j)`.
* :class:`LeapfrogBlock`: :math:`Y_{j+1} = 2Y_j - Y_{j-1} - h^2 K^\top\sigma(K Y_j + b)`.

The two-step schemes carry the pair :math:`(Y_{j-1}, Y_j)` as the two channel
halves of one tensor; a block maps :math:`(Y_{j-1}, Y_j) \mapsto (Y_j, Y_{j+1})`,
its inverse :math:`(Y_j, Y_{j+1}) \mapsto (Y_{j-1}, Y_j)`. **First-step rule**:
:func:`start_pair` forms the first pair from a single state by
:math:`Y_{-1} = Y_0` (Meganet's rule: the channels are duplicated), so the first
Midpoint step is a forward Euler step of size :math:`2h` and the first Leapfrog
step starts from zero velocity. :func:`end_pair` reduces a pair to its newest
state :math:`Y_N`. Between the stages of a network the pair is kept, and both
states are pooled and zero-padded alike (see :mod:`revlib.models.ode`).

**Step size** ``h``: a constructor argument, fixed by default (a plain
float, a hyperparameter like the kernel size); ``learn_h=True`` makes it a
trainable 0-dim parameter of the block.

**Normalisation**: no BatchNorm inside any block. The learned sub-functions are
:math:`K^\top\sigma(K\,\cdot + b)` with one bias, as in Chang et al.'s formula
(their published parameter counts correspond to a bias and no BN in the block);
a BN inside, with its batch statistics and learned scales, would in general
break the structure :math:`K^\top D K` of the Jacobian that the stability
argument rests on.

Every block is a :class:`~revlib.core.blocks.ReversibleBlock` and runs in
:class:`~revlib.core.sequence.ReversibleSequence` in any mode. The Hamiltonian block
inherits the fused backward step of :class:`~revlib.core.couplings.AdditiveCoupling`
(its F and G carry the factors :math:`h` and :math:`-h`); the two-step blocks
have their own fused step, which evaluates F once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from .blocks import (
    ParamGrads,
    ReversibleBlock,
    Run,
    check_same_shape,
    grads_for,
)
from .couplings import AdditiveCoupling
from .halves import split_halves
from .replay import Tape

__all__ = [
    "KTransposeSigmaK",
    "AntisymmetricSigma",
    "StepScaled",
    "HamiltonianBlock",
    "TwoStepBlock",
    "MidpointBlock",
    "LeapfrogBlock",
    "start_pair",
    "end_pair",
    "StartPair",
    "EndPair",
]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def _activation(activation: str | nn.Module) -> nn.Module:
    if isinstance(activation, nn.Module):
        return activation
    try:
        return _ACTIVATIONS[activation]()
    except KeyError:
        raise ValueError(
            f"unknown activation {activation!r}; use one of {sorted(_ACTIVATIONS)} or an nn.Module"
        ) from None


def _init_kernel(weight: Tensor, fan_out: int, std: float | None) -> None:
    """Chang et al.'s initialisation: truncated normal, std sqrt(2 / (k*k*C_out)), cut at 2 std.

    The normal distribution of that std restricted to two standard deviations
    (TensorFlow's ``truncated_normal``), drawn by :func:`torch.nn.init.trunc_normal_`
    as :func:`revlib.models.common.init_official` does.
    """
    if std is None:
        std = math.sqrt(2.0 / fan_out)
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def _kernel(
    owner: str, rows: int, channels: int, kernel_size: int | None, std: float | None
) -> nn.Parameter:
    """A kernel K of shape ``(rows, channels[, k, k])`` with Chang et al.'s initialisation.

    ``kernel_size`` must be odd (so "same" padding keeps the shape) or ``None`` (dense).
    """
    if kernel_size is not None and kernel_size % 2 == 0:
        raise ValueError(f"{owner}: kernel_size must be odd to keep the shape, got {kernel_size}")
    shape = (rows, channels) if kernel_size is None else (rows, channels, kernel_size, kernel_size)
    weight = nn.Parameter(torch.empty(shape))
    _init_kernel(weight, rows * (kernel_size or 1) ** 2, std)
    return weight


class KTransposeSigmaK(nn.Module):
    r""":math:`x \mapsto K^\top \sigma(K x + b)`, with K and :math:`K^\top` sharing one weight.

    Convolutional (``kernel_size`` an odd int): K is ``conv2d`` with weight of
    shape ``(hidden, channels, k, k)``, stride 1 and "same" padding, and
    :math:`K^\top` is ``conv_transpose2d`` with the same weight, which is exactly
    the adjoint of that convolution. Dense (``kernel_size=None``): K is a matrix
    of shape ``(hidden, channels)`` acting on inputs of shape ``(N, channels)``.

    Args:
        channels: channels (features) of the input and of the output.
        hidden: rows of K (default ``channels``).
        kernel_size: odd kernel size, or ``None`` for a dense K.
        bias: learn :math:`b` (zeros at start).
        activation: ``"relu"`` (default), ``"tanh"``, ``"identity"`` or a module.
        init_std: standard deviation of the initial K; default
            :math:`\sqrt{2/(k^2\,\text{hidden})}` (Chang et al.'s code).
    """

    def __init__(
        self,
        channels: int,
        hidden: int | None = None,
        kernel_size: int | None = 3,
        bias: bool = True,
        activation: str | nn.Module = "relu",
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        hidden = channels if hidden is None else hidden
        self.kernel_size = kernel_size
        self.weight = _kernel("KTransposeSigmaK", hidden, channels, kernel_size, init_std)
        self.bias = nn.Parameter(torch.zeros(hidden)) if bias else None
        self.act = _activation(activation)

    def inner(self, x: Tensor) -> Tensor:
        """:math:`K x + b`."""
        if self.kernel_size is None:
            return nnf.linear(x, self.weight, self.bias)
        return nnf.conv2d(x, self.weight, self.bias, padding=self.kernel_size // 2)

    def transpose(self, u: Tensor) -> Tensor:
        r""":math:`K^\top u` with the same weight."""
        if self.kernel_size is None:
            return nnf.linear(u, self.weight.t())
        return nnf.conv_transpose2d(u, self.weight, padding=self.kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.transpose(self.act(self.inner(x)))

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, bias={self.bias is not None}"


class AntisymmetricSigma(nn.Module):
    r""":math:`x \mapsto \sigma((K - K^\top) x + b)`, Haber and Ruthotto's antisymmetric layer.

    :math:`K - K^\top` is antisymmetric, so the Jacobian :math:`D (K - K^\top)`
    (:math:`D` the diagonal of :math:`\sigma'`) has purely imaginary eigenvalues.
    Convolutional: ``conv2d(x, K) - conv_transpose2d(x, K)`` with one square
    weight of shape ``(channels, channels, k, k)``; dense: ``kernel_size=None``.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | None = 3,
        bias: bool = True,
        activation: str | nn.Module = "relu",
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = _kernel("AntisymmetricSigma", channels, channels, kernel_size, init_std)
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.act = _activation(activation)

    def inner(self, x: Tensor) -> Tensor:
        r""":math:`(K - K^\top) x + b`."""
        if self.kernel_size is None:
            return nnf.linear(x, self.weight - self.weight.t(), self.bias)
        pad = self.kernel_size // 2
        out = nnf.conv2d(x, self.weight, padding=pad) - nnf.conv_transpose2d(
            x, self.weight, padding=pad
        )
        return out if self.bias is None else out + self.bias.view(1, -1, *([1] * (x.dim() - 2)))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act(self.inner(x))
        return out

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, bias={self.bias is not None}"


class StepScaled(nn.Module):
    r"""``coef * h**power * fn(x)``: a sub-function times its step-size factor.

    ``h`` is a Python float (fixed step size) or an ``nn.Parameter`` (learned);
    a learned ``h`` is registered here, and the F and G of a Hamiltonian block
    hold the same parameter, so the fused backward step of the coupling
    returns its gradient in two parts that the sequence adds up.
    """

    def __init__(self, fn: nn.Module, coef: float, power: int, h: float | nn.Parameter) -> None:
        super().__init__()
        self.fn = fn
        self.coef = float(coef)
        self.power = int(power)
        self.h = h if isinstance(h, nn.Parameter) else float(h)

    def factor(self) -> Tensor | float:
        """``coef * h**power``."""
        return self.coef * (self.h if self.power == 1 else self.h**self.power)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.factor() * self.fn(x)
        return out

    def extra_repr(self) -> str:
        h = f"{float(self.h.detach() if isinstance(self.h, Tensor) else self.h):g}" + (
            " (learned)" if isinstance(self.h, nn.Parameter) else ""
        )
        return f"coef={self.coef:g}, power={self.power}, h={h}"


def _weight(fn: nn.Module) -> Tensor:
    """``fn.weight``, the kernel of a sub-function (a parameter; checked to be a tensor)."""
    weight = fn.weight
    if not isinstance(weight, Tensor):
        raise TypeError(f"{type(fn).__name__}.weight is a {type(weight).__name__}, not a kernel")
    return weight


def _step_size(block: nn.Module, h: float, learn_h: bool) -> float | nn.Parameter:
    """A fixed step size (float) or, with ``learn_h``, a trainable 0-dim parameter."""
    if not float(h) > 0:
        raise ValueError(f"{type(block).__name__}: the step size h must be positive, got {h}")
    return nn.Parameter(torch.tensor(float(h))) if learn_h else float(h)


class HamiltonianBlock(AdditiveCoupling):
    r"""Two-layer Hamiltonian block (Chang et al. 2018), Verlet step on the halves ``(Y, Z)``.

    .. math::
        Y_{j+1} = Y_j + h K_1^\top \sigma(K_1 Z_j + b_1), \qquad
        Z_{j+1} = Z_j - h K_2^\top \sigma(K_2 Y_{j+1} + b_2),

    inverse :math:`Z_j = Z_{j+1} + h K_2^\top\sigma(K_2 Y_{j+1} + b_2)`,
    :math:`Y_j = Y_{j+1} - h K_1^\top\sigma(K_1 Z_j + b_1)`. It is the additive
    coupling with :math:`F = h K_1^\top\sigma(K_1\cdot + b_1)` and
    :math:`G = -h K_2^\top\sigma(K_2\cdot + b_2)`, so the fused backward step of
    :class:`~revlib.core.couplings.AdditiveCoupling` applies unchanged (each of F and G
    evaluated once). No BatchNorm inside.

    Args:
        channels: channels of the whole state (``Y`` and ``Z`` have half each).
        kernel_size: odd kernel size, or ``None`` for dense K (2-D toys).
        h: step size, fixed unless ``learn_h=True`` (one trainable scalar shared by F and G).
        hidden: rows of each K (default ``channels // 2``, as in Chang et al.).
        activation, bias, init_std: passed to :class:`KTransposeSigmaK`.
    """

    F: StepScaled
    G: StepScaled

    def __init__(
        self,
        channels: int,
        kernel_size: int | None = 3,
        h: float = 0.1,
        hidden: int | None = None,
        activation: str | nn.Module = "relu",
        bias: bool = True,
        learn_h: bool = False,
        init_std: float | None = None,
    ) -> None:
        if channels % 2:
            raise ValueError(
                f"HamiltonianBlock: channels must be even (Y and Z halves), got {channels}"
            )
        half = channels // 2
        step = _step_size(self, h, learn_h)
        F = StepScaled(
            KTransposeSigmaK(half, hidden, kernel_size, bias, activation, init_std), 1.0, 1, step
        )
        G = StepScaled(
            KTransposeSigmaK(half, hidden, kernel_size, bias, activation, init_std), -1.0, 1, step
        )
        super().__init__(F, G)

    @property
    def h(self) -> float | nn.Parameter:
        """The step size (a float, or the shared parameter when learned)."""
        return self.F.h

    def rhs(self, x: Tensor) -> Tensor:
        r"""The ODE's right-hand side
        :math:`(K_1^\top\sigma(K_1 Z + b_1),\ -K_2^\top\sigma(K_2 Y + b_2))` at ``x = (Y, Z)``."""
        y, z = split_halves(self, x)
        return torch.cat([self.F.fn(z), -self.G.fn(y)], dim=1)

    def kernels(self) -> dict[str, Tensor]:
        """The kernels a weight smoothness penalty compares across depth: ``K1`` and ``K2``."""
        return {"K1": _weight(self.F.fn), "K2": _weight(self.G.fn)}


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
    Subclasses set ``alpha``, ``beta`` and ``self.F``, a :class:`StepScaled`
    holding :math:`\gamma(h)`.
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
        return {"K": _weight(self.F.fn)}


class MidpointBlock(TwoStepBlock):
    r"""Midpoint rule: :math:`Y_{j+1} = Y_{j-1} + 2h F(Y_j)`, inverse
    :math:`Y_{j-1} = Y_{j+1} - 2h F(Y_j)`.

    The default F is Haber and Ruthotto's antisymmetric layer
    :math:`\sigma((K - K^\top)Y + b)` (:class:`AntisymmetricSigma`): the midpoint
    rule is stable only when the Jacobian's eigenvalues are (close to)
    imaginary, and this F makes them so. Pass ``F=`` to use another
    shape-preserving module (e.g. a :class:`KTransposeSigmaK`).

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
        self.F = StepScaled(fn, 2.0, 1, _step_size(self, h, learn_h))

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
        hidden, activation, init_std: passed to :class:`KTransposeSigmaK`.
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
        self.F = StepScaled(fn, -1.0, 2, _step_size(self, h, learn_h))

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
