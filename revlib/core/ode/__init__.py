r"""Reversible blocks from ODE discretisations (Haber & Ruthotto 2017; Chang et al. 2018).

A residual block :math:`Y_{j+1} = Y_j + h F(Y_j)` is a forward Euler step of
:math:`\dot Y = F(Y)`. Choosing the ODE and the integrator well gives blocks
that are exactly invertible and, for the Hamiltonian and the second-order
systems, stable (Jacobian eigenvalues on the imaginary axis):

* :class:`~revlib.core.ode.hamiltonian.HamiltonianBlock`, the two-layer
  Hamiltonian network of Chang et al. integrated with Verlet, on the channel
  halves ``(Y, Z)``:

  .. math::
      Y \leftarrow Y + h K_1^\top \sigma(K_1 Z + b_1), \qquad
      Z \leftarrow Z - h K_2^\top \sigma(K_2 Y + b_2).

* :class:`~revlib.core.ode.twostep.MidpointBlock`: :math:`Y_{j+1} = Y_{j-1} + 2h F(Y_j)`.
* :class:`~revlib.core.ode.twostep.LeapfrogBlock`:
  :math:`Y_{j+1} = 2Y_j - Y_{j-1} - h^2 K^\top\sigma(K Y_j + b)`.

The two-step schemes carry the pair :math:`(Y_{j-1}, Y_j)` as the two channel
halves of one tensor; a block maps :math:`(Y_{j-1}, Y_j) \mapsto (Y_j, Y_{j+1})`,
its inverse :math:`(Y_j, Y_{j+1}) \mapsto (Y_{j-1}, Y_j)`. **First-step rule**:
:func:`~revlib.core.ode.twostep.start_pair` forms the first pair from a single
state by :math:`Y_{-1} = Y_0` (Meganet's rule: the channels are duplicated), so
the first Midpoint step is a forward Euler step of size :math:`2h` and the first
Leapfrog step starts from zero velocity. :func:`~revlib.core.ode.twostep.end_pair`
reduces a pair to its newest state :math:`Y_N`. Between the stages of a network
the pair is kept, and both states are pooled and zero-padded alike (see
:mod:`revlib.models.ode`).

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

The package is in three modules, one concern each: :mod:`.kernels` (the
learned sub-functions and the step-size factor), :mod:`.hamiltonian` (the
Hamiltonian block) and :mod:`.twostep` (the two-step blocks and the pair
helpers). Every public name is importable from ``revlib.core.ode`` (and
``revlib.ode``).
"""

from .hamiltonian import HamiltonianBlock
from .kernels import AntisymmetricSigma, KTransposeSigmaK, StepScaled
from .twostep import (
    EndPair,
    LeapfrogBlock,
    MidpointBlock,
    StartPair,
    TwoStepBlock,
    end_pair,
    start_pair,
)

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
