"""revlib: reversible residual networks with activation-free backprop, for PyTorch.

Importing ``revlib`` loads the core and the models, which need only torch.
The book's harness (training loops, data sets, experiments, notebook helpers)
is :mod:`revlib.harness`, imported on demand and installed with the
``revlib[train]`` extra.
"""

from . import models  # noqa: E402
from .core import memcalc, memory, ode, smoothness, stability  # noqa: E402  (submodules as attributes)
from .core.blocks import ReversibleBlock
from .core.checks import check_inverse
from .core.couplings import AdditiveCoupling, AffineCoupling, HalfSwap, NICECoupling
from .core.device import default_device
from .core.modes import MODES, Mode, get_mode, set_mode
from .core.ode import HamiltonianBlock, LeapfrogBlock, MidpointBlock
from .core.sequence import ReversibleSequence

__version__ = "0.2.0"

__all__ = [
    "ReversibleBlock",
    "ReversibleSequence",
    "Mode",
    "MODES",
    "set_mode",
    "get_mode",
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

# Beyond RevNet (chapter 8): invertible downsampling, reversible transformers, momentum networks.
from .core import downsampling, momentum, transformer  # noqa: E402
from .core.downsampling import InjectivePad, SpaceToDepth  # noqa: E402
from .core.momentum import MomentumBlock, MomentumNet  # noqa: E402
from .core.transformer import ReversibleTransformerBlock, TransformerBlock  # noqa: E402

__all__ += [
    "SpaceToDepth",
    "InjectivePad",
    "ReversibleTransformerBlock",
    "TransformerBlock",
    "MomentumBlock",
    "MomentumNet",
]
