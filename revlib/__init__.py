"""revlib: reversible residual networks with activation-free backprop, for PyTorch.

Importing ``revlib`` loads the core and the models, which need only torch.
The book's harness (training loops, data sets, experiments, notebook helpers)
is :mod:`revlib.harness`, imported on demand and installed with the
``revlib[train]`` extra.
"""

# Submodules as attributes: revlib.models, revlib.memory, revlib.ode, ...
from . import models as models
from .core import downsampling as downsampling
from .core import memcalc as memcalc
from .core import memory as memory
from .core import momentum as momentum
from .core import ode as ode
from .core import smoothness as smoothness
from .core import stability as stability
from .core import transformer as transformer
from .core.aux_losses import add_aux_loss
from .core.blocks import ReversibleBlock
from .core.checks import check_inverse
from .core.couplings import AdditiveCoupling, AffineCoupling, HalfSwap, NICECoupling
from .core.device import default_device
from .core.downsampling import InjectivePad, SpaceToDepth
from .core.modes import MODES, Mode, get_mode, set_mode
from .core.momentum import MomentumBlock, MomentumNet
from .core.ode import HamiltonianBlock, LeapfrogBlock, MidpointBlock
from .core.sequence import ReversibleSequence
from .core.transformer import ReversibleTransformerBlock, TransformerBlock

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
    "add_aux_loss",
    "default_device",
    "__version__",
    # Beyond RevNet (chapter 8): invertible downsampling, reversible transformers, momentum
    # networks.
    "SpaceToDepth",
    "InjectivePad",
    "ReversibleTransformerBlock",
    "TransformerBlock",
    "MomentumBlock",
    "MomentumNet",
]
