"""Class-stratified splits and subsets of an :class:`~revlib.harness.data.ImageData`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .datasets import ImageData, Normalization, _normalization

__all__ = ["validation_split", "balanced_subset"]


def validation_split(
    train: ImageData, per_class: int, seed: int = 0, normalization: Normalization = "pixel_mean"
) -> tuple[ImageData, ImageData]:
    """A class-stratified (train, validation) split of a training set: ``per_class`` images of
    each class held out.

    The images of each class are permuted by ``numpy.random.RandomState(seed)``
    (a stream NumPy keeps fixed across versions) and the first ``per_class``
    become the validation split. The normalisation is recomputed from the
    remaining training images, and both parts use it: no statistic of the
    validation (or test) images enters training.
    """
    labels = train.targets.numpy()
    rng = np.random.RandomState(seed)
    held: list[int] = []
    for c in range(train.num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) <= per_class:
            raise ValueError(
                f"validation_split: class {c} has {len(members)} images, not more than {per_class}"
            )
        held += rng.permutation(members)[:per_class].tolist()
    mask = np.ones(len(labels), dtype=bool)
    mask[held] = False
    keep, out = torch.from_numpy(np.flatnonzero(mask)), torch.from_numpy(np.sort(np.asarray(held)))
    mean, std = _normalization(train.images[keep], train.scale, normalization)

    def part(idx: Tensor, split: str) -> ImageData:
        return ImageData(
            train.images[idx].contiguous(),
            train.targets[idx].contiguous(),
            train.num_classes,
            train.scale,
            mean,
            std,
            train.name,
            split,
        )

    return part(keep, "train"), part(out, "val")


# ----------------------------------------------------------------------- subsets


def balanced_subset(
    targets: Tensor | Sequence[int] | ImageData,
    fraction: float,
    seed: int = 0,
    num_classes: int | None = None,
) -> Tensor:
    """Indices of a class-balanced random subset holding ``fraction`` of the data.

    Every class contributes the same number of examples,
    ``k = round(fraction * N / num_classes)`` (at least 1), drawn without
    replacement with a ``torch.Generator`` seeded by ``seed``; the indices come
    back sorted. For CIFAR-10's 50,000 training images, 0.5 % gives 25 per class
    and 20 % gives 1,000 per class. Raises ``ValueError`` if a class has fewer
    than ``k`` examples.
    """
    if isinstance(targets, ImageData):
        num_classes = num_classes or targets.num_classes
        targets = targets.targets
    y = torch.as_tensor(targets, dtype=torch.long)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    num_classes = num_classes or int(y.max()) + 1
    k = max(1, int(round(fraction * len(y) / num_classes)))
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(y == c).flatten()
        if len(members) < k:
            raise ValueError(
                f"class {c} has {len(members)} examples, fewer than the {k} per class "
                f"that fraction {fraction} asks for"
            )
        chosen.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(chosen).sort().values
