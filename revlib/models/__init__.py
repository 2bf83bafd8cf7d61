"""Model families built on revlib's reversible core.

* :mod:`revlib.models.revnet`: ResNet-32/110/164, RevNet-38/110/164 (CIFAR),
  ResNet-101 and RevNet-104 (ImageNet).
* :mod:`revlib.models.vgg`: VGG-19 (CIFAR variant) and Rev-VGG.
* :mod:`revlib.models.ode`: Hamiltonian, Midpoint and Leapfrog networks (Chang et al. 2018).
"""

from .ode import *  # noqa: F401,F403
from .revnet import *  # noqa: F401,F403
from .vgg import *  # noqa: F401,F403
from . import ode, revnet, vgg

__all__ = [*revnet.__all__, *vgg.__all__, *ode.__all__]
