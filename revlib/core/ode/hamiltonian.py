r"""The two-layer Hamiltonian block of Chang et al. (2018), a Verlet step on the halves ``(Y, Z)``.

It is an :class:`~revlib.core.couplings.AdditiveCoupling` whose F and G are
:class:`~revlib.core.ode.kernels.KTransposeSigmaK` scaled by :math:`h` and :math:`-h`, so it
inherits the coupling's fused backward step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..couplings import AdditiveCoupling
from ..halves import split_halves
from .kernels import KTransposeSigmaK, StepScaled, kernel_weight, step_size

__all__ = ["HamiltonianBlock"]


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
        activation, bias, init_std: passed to :class:`~revlib.core.ode.kernels.KTransposeSigmaK`.
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
        step = step_size(self, h, learn_h)
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
        return {"K1": kernel_weight(self.F.fn), "K2": kernel_weight(self.G.fn)}
