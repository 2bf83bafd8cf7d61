"""revlib: reversible residual networks with activation-free backprop, for PyTorch.

The core: couplings (:class:`AdditiveCoupling`, :class:`NICECoupling`,
:class:`AffineCoupling`), :class:`ReversibleSequence` with its three backward
modes, :mod:`revlib.memory` for exact activation-memory measurement and
:func:`check_inverse`. Models live in :mod:`revlib.models`.
"""

from .blocks import ReversibleBlock
from .checks import check_inverse
from .couplings import AdditiveCoupling, AffineCoupling, HalfSwap, NICECoupling
from .device import default_device
from .sequence import MODES, Mode, ReversibleSequence

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
    "check_inverse",
    "default_device",
    "__version__",
]
