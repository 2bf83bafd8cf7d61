"""Model families built on revlib's reversible core (torch only).

* :mod:`revlib.models.common`: convolution, BatchNorm, shortcut and
  initialisation as in the official RevNet code, and :func:`count_parameters`.
* :mod:`revlib.models.revnet`: ResNet-32/110/164, RevNet-38/110/164 (CIFAR),
  ResNet-101 and RevNet-104 (ImageNet).
* :mod:`revlib.models.vgg`: VGG-19 (CIFAR variant) and Rev-VGG.
* :mod:`revlib.models.ode`: Hamiltonian, Midpoint and Leapfrog networks (Chang et al. 2018).

:func:`set_mode` and :func:`get_mode` (from :mod:`revlib.core.modes`) switch any of them.
"""

from ..core.modes import get_mode, set_mode
from . import common, ode, revnet, vgg
from .common import *  # noqa: F401,F403
from .ode import *  # noqa: F401,F403
from .revnet import *  # noqa: F401,F403
from .vgg import *  # noqa: F401,F403

__all__ = [*common.__all__, *revnet.__all__, *vgg.__all__, *ode.__all__, "set_mode", "get_mode"]

# Beyond RevNet (chapter 8): the fully invertible i-RevNet and the vision transformers.
from . import irevnet, vit  # noqa: E402
from .irevnet import *  # noqa: F401,F403,E402
from .vit import *  # noqa: F401,F403,E402

__all__ += [*irevnet.__all__, *vit.__all__]
