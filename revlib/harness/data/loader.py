"""Feeding an :class:`~revlib.harness.data.ImageData` to a model, with the papers' augmentation.

Augmentation (the official RevNet recipe for CIFAR): pad 4 pixels with zeros,
take a random 32x32 crop, flip horizontally with probability 1/2; digits get
pad 1 without the flip, STL-10 pad 12 (:func:`~revlib.harness.data.augmentation_for`).
Zero padding happens after normalisation, so the padded border is the mean
image's value (``pixel_mean``) or the channel mean (``channel``).

Two ways:

* :class:`TensorLoader`, the fast path: it shuffles, normalises and augments
  whole batches with tensor operations on the training device, drawing every
  random number from its own CPU ``torch.Generator``. The batches are therefore
  the same on every device, and a resumed run sees exactly the batches an
  uninterrupted run would have seen.
* :class:`RandomCropFlip` as the ``transform`` of an ``ImageData``, for an
  ordinary ``torch.utils.data.DataLoader``: torchvision's
  ``transforms.v2`` applied image by image, drawing from the global torch RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .datasets import DATASETS, ImageData, augmentation_for, normalize

__all__ = ["TensorLoader", "RandomCropFlip", "pad_crop_flip"]


def pad_crop_flip(x: Tensor, pad: int, oy: Tensor, ox: Tensor, flip: Tensor | None) -> Tensor:
    """Zero-pad a (B, C, H, W) batch by ``pad``, crop each image at its own (oy, ox), flip where
    ``flip``.

    One ``gather`` for the whole batch instead of a crop per image. Kept
    beside torchvision's transforms because it is faster and runs on the
    training device: ``benchmarks/augmentation.py`` measured an epoch of
    CIFAR-sized batches through :class:`TensorLoader` 5.5x faster than
    through :class:`RandomCropFlip` in a ``DataLoader`` on an idle 2-core AMD
    EPYC (118,000 against 21,000 images/s, one thread;
    ``benchmarks/results/augmentation_cpu.json``).
    """
    b, c, h, w = x.shape
    if pad > 0:
        dev = x.device
        xp = nn.functional.pad(x, (pad, pad, pad, pad))
        rows = oy.to(dev).view(b, 1, 1) + torch.arange(h, device=dev).view(1, h, 1)  # (B, H, 1)
        cols = ox.to(dev).view(b, 1, 1) + torch.arange(w, device=dev).view(1, 1, w)  # (B, 1, W)
        idx = (rows * (w + 2 * pad) + cols).view(b, 1, h * w).expand(b, c, h * w)
        x = xp.reshape(b, c, -1).gather(2, idx).view(b, c, h, w)
    if flip is not None:
        x = torch.where(flip.to(x.device).view(b, 1, 1, 1), x.flip(-1), x)
    return x


class RandomCropFlip:
    """Per-image augmentation for a plain ``DataLoader``: zero-pad, random crop, optional flip.

    torchvision's ``transforms.v2.RandomCrop(size, padding=pad)`` then
    ``RandomHorizontalFlip()`` (if ``flip``), on a normalised float image
    (C, H, W); the crop size is the image's own size. Draws from the global
    torch RNG. :class:`TensorLoader` does the same on whole batches.
    """

    def __init__(self, pad: int, flip: bool) -> None:
        self.pad, self.flip = int(pad), bool(flip)
        self._by_size: dict[tuple[int, ...], Callable[[Tensor], Tensor]] = {}

    def _transform(self, size: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
        t = self._by_size.get(size)
        if t is None:
            from torchvision.transforms import v2

            steps = [v2.RandomCrop(size, padding=self.pad, fill=0)] if self.pad > 0 else []
            if self.flip:
                steps.append(v2.RandomHorizontalFlip(0.5))
            t = self._by_size[size] = v2.Compose(steps or [v2.Identity()])
        return t

    def __call__(self, x: Tensor) -> Tensor:
        return self._transform(tuple(x.shape[-2:]))(x)

    def __repr__(self) -> str:
        return f"RandomCropFlip(pad={self.pad}, flip={self.flip})"


class TensorLoader:
    """Batches of an :class:`~revlib.harness.data.ImageData`, shuffled, augmented and normalised
    on ``device``.

    Args:
        data: the images and labels.
        batch_size: images per batch.
        shuffle: draw a new permutation every epoch.
        augment: pad by ``pad`` pixels, crop at a random offset, flip with
            probability 1/2 if ``flip``; ``pad``/``flip`` default to
            :func:`~revlib.harness.data.augmentation_for` the data set.
        drop_last: drop the last, smaller batch of an epoch.
        device: where the images live and the batches are made (the whole data
            set is copied there once, as ``uint8``: CIFAR-10 takes 150 MB).
        seed: seed of the loader's own ``torch.Generator`` (on the CPU), the only
            source of its randomness: the batches do not depend on the device or
            on the global RNG, and saving ``loader.generator.get_state()`` at the
            start of an epoch is enough to replay that epoch exactly.

    Iterating yields ``(x, y)``: ``x`` float32 (B, C, H, W), ``y`` int64 (B,).
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int = 100,
        *,
        shuffle: bool = True,
        augment: bool = True,
        pad: int | None = None,
        flip: bool | None = None,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> None:
        self.data = data
        self.batch_size = int(batch_size)
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        defaults = augmentation_for(data.name) if data.name in DATASETS else dict(pad=0, flip=False)
        self.pad = defaults["pad"] if pad is None else int(pad)
        self.flip = defaults["flip"] if flip is None else bool(flip)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.generator = torch.Generator().manual_seed(seed)
        self._images = data.images.to(self.device)
        self._targets = data.targets.to(self.device)
        self._mean = data.mean.to(self.device)
        self._std = data.std.to(self.device)

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.data)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            b = len(idx)
            dev_idx = idx.to(self.device)
            x = normalize(self._images[dev_idx], self.data.scale, self._mean, self._std)
            if self.augment and (self.pad > 0 or self.flip):
                o = torch.randint(0, 2 * self.pad + 1, (2, b), generator=self.generator)
                f = torch.rand(b, generator=self.generator) < 0.5 if self.flip else None
                x = pad_crop_flip(x, self.pad, o[0], o[1], f)
            yield x, self._targets[dev_idx]

    def __repr__(self) -> str:
        return (
            f"TensorLoader({self.data.name}/{self.data.split}: {len(self.data)} images, "
            f"batch {self.batch_size}, shuffle={self.shuffle}, augment={self.augment} "
            f"(pad {self.pad}, flip {self.flip}), device={self.device})"
        )
