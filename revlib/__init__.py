"""revlib: reversible residual networks with activation-free backprop, for PyTorch.

The core: couplings (:class:`AdditiveCoupling`, :class:`NICECoupling`,
:class:`AffineCoupling`), :class:`ReversibleSequence` with its three backward
modes, :mod:`revlib.memory` for exact activation-memory measurement and
:func:`check_inverse`; the ODE blocks of Chang et al. (:class:`HamiltonianBlock`,
:class:`MidpointBlock`, :class:`LeapfrogBlock`). Models live in
:mod:`revlib.models`, stability tools in :mod:`revlib.stability`, the weight
smoothness penalty in :mod:`revlib.smoothness`, training helpers in
:mod:`revlib.train` and data sets in :mod:`revlib.data` (imported on demand).
"""

from .blocks import ReversibleBlock
from .checks import check_inverse
from .couplings import AdditiveCoupling, AffineCoupling, HalfSwap, NICECoupling
from .device import default_device
from .ode import HamiltonianBlock, LeapfrogBlock, MidpointBlock
from .sequence import MODES, Mode, ReversibleSequence

from . import memory, models, smoothness, stability  # noqa: E402  (submodules as attributes)

__version__ = "0.1.0"

__all__ = [
    "ReversibleBlock",
    "ReversibleSequence",
    "Mode",
    "MODES",
    "AdditiveCoupling",
    "NICECoupling",
    "AffineCoupling",
    "HalfSwap",
    "HamiltonianBlock",
    "MidpointBlock",
    "LeapfrogBlock",
    "check_inverse",
    "default_device",
    "__version__",
]
