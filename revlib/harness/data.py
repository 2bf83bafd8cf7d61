"""Data for the book's experiments: CIFAR-10/100, STL-10 and an offline data set.

Every data set is held in memory as one ``uint8`` image tensor (N, C, H, W) and
its labels (:class:`ImageData`). Two ways to feed it to a model:

* :class:`TensorLoader`, the fast path: it shuffles, augments (pad, random crop,
  horizontal flip) and normalises whole batches with tensor operations on the
  training device, drawing every random number from its own CPU
  ``torch.Generator``. The batches are therefore the same on every device, and a
  resumed run sees exactly the batches an uninterrupted run would have seen.
* :meth:`ImageData.__getitem__` returns one normalised image, so the data also
  work with an ordinary ``torch.utils.data.DataLoader`` (pass
  ``transform=RandomCropFlip(...)`` for augmentation).

The data sets:

* ``"cifar10"``, ``"cifar100"``, ``"stl10"``: through torchvision. Each is read
  from ``root`` if it is there, else downloaded if the network allows. If it is
  missing and cannot be downloaded, :class:`DataUnavailableError` says how to
  get it, within seconds (the network is probed with a short timeout first).
* ``"digits"``: scikit-learn's handwritten digits (1,797 grey 8x8 images, 10
  classes), which ship inside the scikit-learn package, so they need no network.
  The book and CI use it offline. A fixed, seeded, class-stratified split gives
  1,347 training and 450 test images.

Augmentation (the official RevNet recipe for CIFAR): pad 4 pixels with zeros,
take a random 32x32 crop, flip horizontally with probability 1/2. The same
idea scaled to 8x8 digits is pad 1 and crop 8, *without* the flip: a mirrored
2, 3, 4, 5, 7 or 9 is no longer that digit (a flip changes the class, it is
not a symmetry of the data set). STL-10 uses Chang et al.'s 12-pixel pad.

Normalisation: ``"pixel_mean"`` (default) subtracts the per-pixel mean image of
the training set, as the official RevNet code does; ``"channel"`` subtracts the
per-channel mean and divides by the per-channel standard deviation (the usual
PyTorch convention). Both are computed from the training split and used for the
test split too. Zero padding happens after normalisation, so the padded border
is the mean image's value (``pixel_mean``) or the channel mean (``channel``).
"""

from __future__ import annotations

import math
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

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
]

Normalization = Literal["pixel_mean", "channel", "none"]

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "stl10", "digits")

# What to download and where it ends up, for the error message.
_SOURCES = {
    "cifar10": (
        "CIFAR-10",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        "CIFAR10",
    ),
    "cifar100": (
        "CIFAR-100",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "cifar-100-python",
        "CIFAR100",
    ),
    "stl10": (
        "STL-10",
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "stl10_binary",
        "STL10",
    ),
}


class DataUnavailableError(RuntimeError):
    """A data set is not on disk and could not be downloaded; the message says how to get it."""


def default_root() -> Path:
    """Where data sets live: ``$REVLIB_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("REVLIB_DATA", "data")).expanduser()


# --------------------------------------------------------------------------- data


@dataclass(eq=False)  # no field-wise ==: the fields are tensors
class ImageData(torch.utils.data.Dataset):
    """Images in memory, with their labels and normalisation.

    Attributes:
        images: ``uint8`` tensor (N, C, H, W); pixel value = ``images * scale``.
        targets: ``int64`` tensor (N,).
        num_classes: number of classes.
        scale: factor from stored integers to [0, 1] (1/255, or 1/16 for digits).
        mean: (C, H, W) tensor subtracted after scaling (per-pixel mean image,
            or the channel means broadcast), from the training split.
        std: (C, 1, 1) tensor the result is divided by (ones for ``pixel_mean``).
        name: data set name; ``split``: ``"train"`` or ``"test"``.
        transform: optional callable applied to the normalised float image in
            ``__getitem__`` (e.g. :class:`RandomCropFlip`); :class:`TensorLoader`
            ignores it and augments batches itself.
    """

    images: Tensor
    targets: Tensor
    num_classes: int
    scale: float
    mean: Tensor
    std: Tensor
    name: str = ""
    split: str = ""
    transform: object = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])  # type: ignore[return-value]

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 images (B, C, H, W), on any device, to normalised float32."""
        mean = self.mean.to(images.device)
        std = self.std.to(images.device)
        return (images.float() * self.scale - mean) / std

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.normalize(self.images[i : i + 1])[0]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[i])

    def subset(self, indices: Sequence[int] | Tensor) -> "ImageData":
        """The same data set restricted to ``indices`` (normalisation unchanged)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageData(self.images[idx], self.targets[idx], self.num_classes, self.scale,
                         self.mean, self.std, self.name, self.split, self.transform)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.targets, minlength=self.num_classes).tolist()


def _normalization(train_images: Tensor, scale: float, how: Normalization) -> tuple[Tensor, Tensor]:
    x = train_images.double() * scale
    c = x.shape[1]
    if how == "pixel_mean":
        return x.mean(0).float(), torch.ones(c, 1, 1)
    if how == "channel":
        mean = x.mean((0, 2, 3))
        std = x.std((0, 2, 3))
        return mean.view(c, 1, 1).expand(x.shape[1:]).float().contiguous(), std.view(c, 1, 1).float()
    if how == "none":
        return torch.zeros(x.shape[1:]), torch.ones(c, 1, 1)
    raise ValueError(f"normalization must be 'pixel_mean', 'channel' or 'none', got {how!r}")


def _pair(name: str, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
          scale: float, normalization: Normalization) -> tuple[ImageData, ImageData]:
    mean, std = _normalization(train_x, scale, normalization)
    train = ImageData(train_x, train_y, num_classes, scale, mean, std, name, "train")
    test = ImageData(test_x, test_y, num_classes, scale, mean, std, name, "test")
    return train, test


# ------------------------------------------------------------------------ digits


def load_digits(test_fraction: float = 0.25, seed: int = 0,
                normalization: Normalization = "pixel_mean") -> tuple[ImageData, ImageData]:
    """scikit-learn's 8x8 handwritten digits as (train, test) :class:`ImageData`.

    The split is stratified: from each class, ``round(test_fraction * n_class)``
    images, chosen by ``numpy.random.RandomState(seed)`` (a generator whose
    stream NumPy keeps fixed across versions), go to the test split. With the
    defaults: 1,347 training and 450 test images. Pixel values 0..16 are stored
    as ``uint8`` with ``scale = 1/16``.
    """
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    images = np.asarray(bunch.images, dtype=np.uint8)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.RandomState(seed)
    test_idx = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        k = int(round(test_fraction * len(members)))
        test_idx.extend(rng.permutation(members)[:k].tolist())
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_idx] = True
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(labels)
    tr, te = torch.from_numpy(~is_test), torch.from_numpy(is_test)
    return _pair("digits", x[tr].contiguous(), y[tr].contiguous(), x[te].contiguous(), y[te].contiguous(),
                 10, 1.0 / 16.0, normalization)


# ------------------------------------------------------------------- torchvision


def _probe(url: str, timeout: float) -> str | None:
    """None if the URL's server answers an HTTP HEAD request within ``timeout`` s, else why not.

    Runs in a daemon thread, so that even a DNS lookup that ignores socket
    timeouts cannot make the caller wait much longer than ``timeout``. An HTTP
    error status counts as an answer: the download itself then decides.
    """
    import urllib.error
    import urllib.request

    result: list[str | None] = []

    def attempt() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                result.append(None)
        except urllib.error.HTTPError:
            result.append(None)  # the server is there
        except Exception as exc:  # DNS failure, refused, unreachable, timeout
            reason = getattr(exc, "reason", exc)
            result.append(f"{type(reason).__name__}: {reason}")

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if not result:
        return f"no answer from {url} within {timeout:g} s"
    return result[0]


def _unavailable(name: str, root: Path, reason: str) -> DataUnavailableError:
    title, url, folder, cls = _SOURCES[name]
    root = root.resolve()
    return DataUnavailableError(
        f"{title} is not in {root} and could not be downloaded ({reason}).\n"
        f"To get it, do one of these:\n"
        f"  * on a machine with internet access run\n"
        f"      python -c \"import torchvision; torchvision.datasets.{cls}('data', download=True)\"\n"
        f"    and copy the folder data/{folder} to {root / folder};\n"
        f"  * download {url} and extract it into {root} (so that {root / folder} exists);\n"
        f"  * pass root= (or set $REVLIB_DATA to) a folder that already holds {folder}.\n"
        f"Offline, the data set 'digits' (scikit-learn's bundled 8x8 digits) needs no download."
    )


def _torchvision(name: str, root: Path, download: bool, timeout: float, **kwargs):
    """A torchvision data set: from disk if present, else downloaded, else a clear error."""
    import torchvision

    cls = getattr(torchvision.datasets, _SOURCES[name][3])
    try:
        return cls(str(root), download=False, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError):
        pass  # not there, or incomplete
    if not download:
        raise _unavailable(name, root, "downloading was switched off: download=False")
    reason = _probe(_SOURCES[name][1], timeout)
    if reason is not None:
        raise _unavailable(name, root, reason)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # per socket operation: a stalled download fails, a slow one continues
    try:
        root.mkdir(parents=True, exist_ok=True)
        return cls(str(root), download=True, **kwargs)
    except Exception as exc:  # network errors, HTTP errors, checksum failures
        raise _unavailable(name, root, f"{type(exc).__name__}: {exc}") from None
    finally:
        socket.setdefaulttimeout(old)


def _cifar(name: str, root: Path, download: bool, timeout: float, normalization: Normalization):
    parts = []
    for train in (True, False):
        ds = _torchvision(name, root, download, timeout, train=train)
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        y = torch.as_tensor(ds.targets, dtype=torch.long)
        parts += [x, y]
    return _pair(name, *parts, 100 if name == "cifar100" else 10, 1.0 / 255.0, normalization)


def _stl10(root: Path, download: bool, timeout: float, normalization: Normalization):
    parts = []
    for split in ("train", "test"):
        ds = _torchvision("stl10", root, download, timeout, split=split)
        parts += [torch.from_numpy(np.ascontiguousarray(ds.data)), torch.as_tensor(ds.labels, dtype=torch.long)]
    return _pair("stl10", *parts, 10, 1.0 / 255.0, normalization)


def load(name: str, root: str | os.PathLike | None = None, *, download: bool = True, timeout: float = 10.0,
         normalization: Normalization = "pixel_mean", seed: int = 0) -> tuple[ImageData, ImageData]:
    """(train, test) :class:`ImageData` for ``"cifar10"``, ``"cifar100"``, ``"stl10"`` or ``"digits"``.

    Args:
        root: folder of the torchvision data sets (default :func:`default_root`).
        download: try to download a missing data set. The host is probed first
            with ``timeout`` seconds, and the download runs with that socket
            timeout, so an offline machine gets :class:`DataUnavailableError`
            within seconds instead of a hang.
        normalization: ``"pixel_mean"`` (official RevNet), ``"channel"`` or ``"none"``.
        seed: the digits split's seed (ignored for the others, which have official splits).
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key == "digits":
        return load_digits(seed=seed, normalization=normalization)
    if key not in _SOURCES:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    root = Path(root) if root is not None else default_root()
    if key == "stl10":
        return _stl10(root, download, timeout, normalization)
    return _cifar(key, root, download, timeout, normalization)


def augmentation_for(name: str) -> dict:
    """The augmentation each data set gets: ``{"pad": ..., "flip": ...}``.

    CIFAR: pad 4, flip (official RevNet). STL-10: pad 12, flip (Chang et al.).
    Digits: pad 1, no flip (a mirrored digit is a different symbol).
    """
    key = name.lower().replace("-", "").replace("_", "")
    return {"cifar10": dict(pad=4, flip=True), "cifar100": dict(pad=4, flip=True),
            "stl10": dict(pad=12, flip=True), "digits": dict(pad=1, flip=False)}[key]


# ----------------------------------------------------------------------- subsets


def balanced_subset(targets: Tensor | Sequence[int] | ImageData, fraction: float, seed: int = 0,
                    num_classes: int | None = None) -> Tensor:
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
            raise ValueError(f"class {c} has {len(members)} examples, fewer than the {k} per class "
                             f"that fraction {fraction} asks for")
        chosen.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(chosen).sort().values


# ---------------------------------------------------------------- augmentation


def _pad_crop_flip(x: Tensor, pad: int, oy: Tensor, ox: Tensor, flip: Tensor | None) -> Tensor:
    """Zero-pad a (B, C, H, W) batch by ``pad``, crop each image at (oy, ox), flip where ``flip``."""
    b, c, h, w = x.shape
    if pad > 0:
        dev = x.device
        xp = F.pad(x, (pad, pad, pad, pad))
        rows = oy.to(dev).view(b, 1, 1) + torch.arange(h, device=dev).view(1, h, 1)  # (B, H, 1)
        cols = ox.to(dev).view(b, 1, 1) + torch.arange(w, device=dev).view(1, 1, w)  # (B, 1, W)
        idx = (rows * (w + 2 * pad) + cols).view(b, 1, h * w).expand(b, c, h * w)
        x = xp.reshape(b, c, -1).gather(2, idx).view(b, c, h, w)
    if flip is not None:
        x = torch.where(flip.to(x.device).view(b, 1, 1, 1), x.flip(-1), x)
    return x


class RandomCropFlip:
    """Per-image augmentation for a plain ``DataLoader``: zero-pad, random crop, optional flip.

    Draws from the global torch RNG (or ``generator``). :class:`TensorLoader`
    does the same on whole batches.
    """

    def __init__(self, pad: int, flip: bool, generator: torch.Generator | None = None) -> None:
        self.pad, self.flip, self.generator = pad, flip, generator

    def __call__(self, x: Tensor) -> Tensor:
        o = torch.randint(0, 2 * self.pad + 1, (2,), generator=self.generator)
        f = (torch.rand(1, generator=self.generator) < 0.5) if self.flip else None
        return _pad_crop_flip(x.unsqueeze(0), self.pad, o[:1], o[1:], f)[0]

    def __repr__(self) -> str:
        return f"RandomCropFlip(pad={self.pad}, flip={self.flip})"


# ------------------------------------------------------------------------ loader


class TensorLoader:
    """Batches of an :class:`ImageData`, shuffled, augmented and normalised on ``device``.

    Args:
        data: the images and labels.
        batch_size: images per batch.
        shuffle: draw a new permutation every epoch.
        augment: pad by ``pad`` pixels, crop at a random offset, flip with
            probability 1/2 if ``flip``; ``pad``/``flip`` default to
            :func:`augmentation_for` the data set.
        drop_last: drop the last, smaller batch of an epoch.
        device: where the images live and the batches are made (the whole data
            set is copied there once, as ``uint8``: CIFAR-10 takes 150 MB).
        seed: seed of the loader's own ``torch.Generator`` (on the CPU), the only
            source of its randomness: the batches do not depend on the device or
            on the global RNG, and saving ``loader.generator.get_state()`` at the
            start of an epoch is enough to replay that epoch exactly.

    Iterating yields ``(x, y)``: ``x`` float32 (B, C, H, W), ``y`` int64 (B,).
    """

    def __init__(self, data: ImageData, batch_size: int = 100, *, shuffle: bool = True, augment: bool = True,
                 pad: int | None = None, flip: bool | None = None, drop_last: bool = False,
                 device: torch.device | str | None = None, seed: int = 0) -> None:
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

    def to(self, device: torch.device | str) -> "TensorLoader":
        """Move the stored images to ``device`` (the generator state is kept)."""
        self.device = torch.device(device)
        self._images, self._targets = self._images.to(self.device), self._targets.to(self.device)
        self._mean, self._std = self._mean.to(self.device), self._std.to(self.device)
        return self

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.data)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            b = len(idx)
            dev_idx = idx.to(self.device)
            x = (self._images[dev_idx].float() * self.data.scale - self._mean) / self._std
            if self.augment and (self.pad > 0 or self.flip):
                o = torch.randint(0, 2 * self.pad + 1, (2, b), generator=self.generator)
                f = torch.rand(b, generator=self.generator) < 0.5 if self.flip else None
                x = _pad_crop_flip(x, self.pad, o[0], o[1], f)
            yield x, self._targets[dev_idx]

    def __repr__(self) -> str:
        return (f"TensorLoader({self.data.name}/{self.data.split}: {len(self.data)} images, batch {self.batch_size}, "
                f"shuffle={self.shuffle}, augment={self.augment} (pad {self.pad}, flip {self.flip}), device={self.device})")
