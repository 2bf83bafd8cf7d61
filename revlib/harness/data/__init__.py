"""Data for the book's experiments: CIFAR-10/100, STL-10 and an offline data set.

The package's modules, whose public names it re-exports:

* :mod:`~revlib.harness.data.datasets`: :class:`ImageData` (images in memory
  as ``uint8``, labels, normalisation), :func:`load` for ``"cifar10"``,
  ``"cifar100"``, ``"stl10"`` (torchvision) and ``"digits"`` (scikit-learn,
  offline), :func:`augmentation_for`;
* :mod:`~revlib.harness.data.fashion_mnist`: :func:`load_fashion_mnist` and
  :func:`fmnist_splits` (training, validation and test splits);
* :mod:`~revlib.harness.data.splits`: :func:`validation_split` and
  :func:`balanced_subset`, class-stratified;
* :mod:`~revlib.harness.data.loader`: :class:`TensorLoader` (shuffles,
  normalises and augments whole batches on the training device, from its own
  seeded generator) and :class:`RandomCropFlip` (torchvision's per-image
  transforms, for a plain ``DataLoader``).
"""

from . import datasets, fashion_mnist, loader, splits
from .datasets import *  # noqa: F401,F403
from .fashion_mnist import *  # noqa: F401,F403
from .loader import *  # noqa: F401,F403
from .splits import *  # noqa: F401,F403

__all__ = [*datasets.__all__, *fashion_mnist.__all__, *splits.__all__, *loader.__all__]
