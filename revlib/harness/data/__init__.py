"""Data for the book's experiments: CIFAR-10/100, STL-10 and an offline data set.

The package has two modules, and re-exports their public names:

* :mod:`~revlib.harness.data.datasets`: :class:`ImageData` (images in memory
  as ``uint8``, labels, normalisation), :func:`load` for ``"cifar10"``,
  ``"cifar100"``, ``"stl10"`` (torchvision) and ``"digits"`` (scikit-learn,
  offline), :func:`balanced_subset`, :func:`augmentation_for`;
* :mod:`~revlib.harness.data.loader`: :class:`TensorLoader` (shuffles,
  normalises and augments whole batches on the training device, from its own
  seeded generator) and :class:`RandomCropFlip` (torchvision's per-image
  transforms, for a plain ``DataLoader``).
"""

from .datasets import (
    DATASETS,
    DataUnavailableError,
    ImageData,
    augmentation_for,
    balanced_subset,
    default_root,
    load,
    load_digits,
    normalize,
)
from .loader import RandomCropFlip, TensorLoader, pad_crop_flip

__all__ = [
    "DATASETS",
    "DataUnavailableError",
    "ImageData",
    "TensorLoader",
    "RandomCropFlip",
    "load",
    "load_digits",
    "balanced_subset",
    "default_root",
    "augmentation_for",
    "normalize",
    "pad_crop_flip",
]
