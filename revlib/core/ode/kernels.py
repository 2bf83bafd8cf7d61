r"""The learned sub-functions of the ODE blocks and their step-size factor.

:class:`KTransposeSigmaK` (:math:`K^\top\sigma(Kx + b)`, the Hamiltonian and
Leapfrog right-hand sides), :class:`AntisymmetricSigma` (Haber and Ruthotto's
:math:`\sigma((K - K^\top)x + b)`, the Midpoint default) and :class:`StepScaled`
(a sub-function times :math:`\text{coef}\cdot h^{\text{power}}`), with Chang et
al.'s initialisation of a kernel. The blocks are in :mod:`.hamiltonian` and
:mod:`.twostep`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

__all__ = ["KTransposeSigmaK", "AntisymmetricSigma", "StepScaled", "kernel_weight", "step_size"]

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


def kernel_weight(fn: nn.Module) -> Tensor:
    """``fn.weight``, the kernel of a sub-function (a parameter; checked to be a tensor)."""
    weight = fn.weight
    if not isinstance(weight, Tensor):
        raise TypeError(f"{type(fn).__name__}.weight is a {type(weight).__name__}, not a kernel")
    return weight


def step_size(block: nn.Module, h: float, learn_h: bool) -> float | nn.Parameter:
    """A fixed step size (float) or, with ``learn_h``, a trainable 0-dim parameter."""
    if not float(h) > 0:
        raise ValueError(f"{type(block).__name__}: the step size h must be positive, got {h}")
    return nn.Parameter(torch.tensor(float(h))) if learn_h else float(h)
