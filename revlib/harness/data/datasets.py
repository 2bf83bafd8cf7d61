"""The data sets: CIFAR-10/100, STL-10 and Fashion-MNIST through torchvision, scikit-learn's
digits offline.

Every data set is held in memory as one ``uint8`` image tensor (N, C, H, W) and
its labels (:class:`ImageData`).

* ``"cifar10"``, ``"cifar100"``, ``"stl10"``: through torchvision. Each is read
  from ``root`` if it is there, else downloaded if the network allows. If it is
  missing and cannot be downloaded, :class:`DataUnavailableError` says how to
  get it, within seconds (the network is probed with a short timeout first).
* ``"digits"``: scikit-learn's handwritten digits (1,797 grey 8x8 images, 10
  classes), which ship inside the scikit-learn package, so they need no network.
  The book and CI use it offline. A fixed, seeded, class-stratified split gives
  1,347 training and 450 test images.
* ``"fashion_mnist"``: Fashion-MNIST (Xiao et al. 2017; 60,000 training and
  10,000 test images, grey 28x28, 10 classes), read with torchvision's own
  MNIST-format reader (:mod:`~revlib.harness.data.fashion_mnist`). A
  class-stratified validation split of a training set:
  :func:`~revlib.harness.data.splits.validation_split`.

Normalisation: ``"pixel_mean"`` (default) subtracts the per-pixel mean image of
the training set, as the official RevNet code does; ``"channel"`` subtracts the
per-channel mean and divides by the per-channel standard deviation (the usual
PyTorch convention). Both are computed from the training split and used for the
test split too: ``x = (images * scale - mean) / std`` (:func:`normalize`).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DATASETS",
    "DataUnavailableError",
    "ImageData",
    "Normalization",
    "normalize",
    "load",
    "load_digits",
    "default_root",
    "augmentation_for",
]

Normalization = Literal["pixel_mean", "channel", "none"]

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "stl10", "digits", "fashion_mnist")


class _Source(NamedTuple):
    """Where a torchvision data set comes from and where it ends up (for the error message)."""

    title: str
    url: str
    folder: str
    torchvision_class: str


_SOURCES: dict[str, _Source] = {
    "cifar10": _Source(
        "CIFAR-10",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        "CIFAR10",
    ),
    "cifar100": _Source(
        "CIFAR-100",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "cifar-100-python",
        "CIFAR100",
    ),
    "stl10": _Source(
        "STL-10",
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "stl10_binary",
        "STL10",
    ),
    "fashionmnist": _Source(
        "Fashion-MNIST",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "FashionMNIST/raw",
        "FashionMNIST",
    ),
}

_AUGMENTATION: dict[str, dict] = {
    "cifar10": dict(pad=4, flip=True),
    "cifar100": dict(pad=4, flip=True),
    "stl10": dict(pad=12, flip=True),
    "digits": dict(pad=1, flip=False),
    "fashionmnist": dict(pad=2, flip=True),
}


class DataUnavailableError(RuntimeError):
    """A data set is not on disk and could not be downloaded; the message says how to get it."""


def _key(name: str) -> str:
    """A data set's name as :data:`DATASETS` spells it: ``"CIFAR-10"`` and ``"cifar_10"`` are
    ``"cifar10"``."""
    return name.lower().replace("-", "").replace("_", "")


def default_root() -> Path:
    """Where data sets live: ``$REVLIB_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("REVLIB_DATA", "data")).expanduser()


def augmentation_for(name: str) -> dict:
    """The augmentation each data set gets: ``{"pad": ..., "flip": ...}``.

    CIFAR: pad 4, flip (official RevNet). STL-10: pad 12, flip (Chang et al.).
    Digits: pad 1, no flip (a mirrored 2, 3, 4, 5, 7 or 9 is no longer that
    digit: a flip changes the class, it is not a symmetry of the data set).
    Fashion-MNIST: pad 2, flip (a mirrored shirt or shoe is still one).
    """
    return dict(_AUGMENTATION[_key(name)])


# --------------------------------------------------------------------------- data


def normalize(images: Tensor, scale: float, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 images (B, C, H, W) to normalised float32: ``(images * scale - mean) / std``.

    ``mean`` and ``std`` must be on the images' device.
    """
    return (images.float() * scale - mean) / std


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
            ``__getitem__`` (e.g. :class:`~revlib.harness.data.RandomCropFlip`);
            :class:`~revlib.harness.data.TensorLoader` ignores it and augments
            batches itself.
    """

    images: Tensor
    targets: Tensor
    num_classes: int
    scale: float
    mean: Tensor
    std: Tensor
    name: str = ""
    split: str = ""
    transform: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                "images must be a uint8 (N, C, H, W) tensor, "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        _, _, height, width = self.images.shape  # (N, C, H, W): __post_init__ checks
        return height, width

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 images (B, C, H, W), on any device, to normalised float32."""
        return normalize(
            images, self.scale, self.mean.to(images.device), self.std.to(images.device)
        )

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.normalize(self.images[i : i + 1])[0]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[i])

    def subset(self, indices: Sequence[int] | Tensor) -> ImageData:
        """The same data set restricted to ``indices`` (normalisation unchanged)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageData(
            self.images[idx],
            self.targets[idx],
            self.num_classes,
            self.scale,
            self.mean,
            self.std,
            self.name,
            self.split,
            self.transform,
        )

    def class_counts(self) -> list[int]:
        return torch.bincount(self.targets, minlength=self.num_classes).tolist()


def _normalization(train_images: Tensor, scale: float, how: Normalization) -> tuple[Tensor, Tensor]:
    """(mean, std) of :func:`normalize` from the training images, computed in float64."""
    x = train_images.double() * scale
    c = x.shape[1]
    if how == "pixel_mean":
        return x.mean(0).float(), torch.ones(c, 1, 1)
    if how == "channel":
        mean = x.mean((0, 2, 3))
        std = x.std((0, 2, 3))
        return mean.view(c, 1, 1).expand(x.shape[1:]).float().contiguous(), std.view(
            c, 1, 1
        ).float()
    if how == "none":
        return torch.zeros(x.shape[1:]), torch.ones(c, 1, 1)
    raise ValueError(f"normalization must be 'pixel_mean', 'channel' or 'none', got {how!r}")


def _pair(
    name: str,
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    scale: float,
    normalization: Normalization,
) -> tuple[ImageData, ImageData]:
    mean, std = _normalization(train_x, scale, normalization)
    train = ImageData(train_x, train_y, num_classes, scale, mean, std, name, "train")
    test = ImageData(test_x, test_y, num_classes, scale, mean, std, name, "test")
    return train, test


# ------------------------------------------------------------------------ digits


def load_digits(
    test_fraction: float = 0.25, seed: int = 0, normalization: Normalization = "pixel_mean"
) -> tuple[ImageData, ImageData]:
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
    return _pair(
        "digits",
        x[tr].contiguous(),
        y[tr].contiguous(),
        x[te].contiguous(),
        y[te].contiguous(),
        10,
        1.0 / 16.0,
        normalization,
    )


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
            with urllib.request.urlopen(
                urllib.request.Request(url, method="HEAD"), timeout=timeout
            ):
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
    src = _SOURCES[name]
    root = root.resolve()
    return DataUnavailableError(
        f"{src.title} is not in {root} and could not be downloaded ({reason}).\n"
        f"To get it, do one of these:\n"
        f"  * on a machine with internet access run\n"
        f'      python -c "import torchvision; '
        f"torchvision.datasets.{src.torchvision_class}('data', download=True)\"\n"
        f"    and copy the folder data/{src.folder} to {root / src.folder};\n"
        f"  * download {src.url} and extract it into {root} (so that {root / src.folder} exists);\n"
        f"  * pass root= (or set $REVLIB_DATA to) a folder that already holds {src.folder}.\n"
        f"Offline, the data set 'digits' (scikit-learn's bundled 8x8 digits) needs no download."
    )


def _torchvision(name: str, root: Path, download: bool, timeout: float, **kwargs: Any) -> Any:
    """A torchvision data set: from disk if present, else downloaded, else a clear error."""
    import torchvision

    src = _SOURCES[name]
    cls = getattr(torchvision.datasets, src.torchvision_class)
    try:
        return cls(str(root), download=False, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError):
        pass  # not there, or incomplete
    if not download:
        raise _unavailable(name, root, "downloading was switched off: download=False")
    reason = _probe(src.url, timeout)
    if reason is not None:
        raise _unavailable(name, root, reason)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(
        timeout
    )  # per socket operation: a stalled download fails, a slow one continues
    try:
        root.mkdir(parents=True, exist_ok=True)
        return cls(str(root), download=True, **kwargs)
    except Exception as exc:  # network errors, HTTP errors, checksum failures
        raise _unavailable(name, root, f"{type(exc).__name__}: {exc}") from None
    finally:
        socket.setdefaulttimeout(old)


def _cifar(
    name: str, root: Path, download: bool, timeout: float, normalization: Normalization
) -> tuple[ImageData, ImageData]:
    parts: list[Tensor] = []
    for train in (True, False):
        ds = _torchvision(name, root, download, timeout, train=train)
        x = (
            torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        )  # NHWC -> NCHW
        y = torch.as_tensor(ds.targets, dtype=torch.long)
        parts += [x, y]
    train_x, train_y, test_x, test_y = parts
    return _pair(
        name,
        train_x,
        train_y,
        test_x,
        test_y,
        100 if name == "cifar100" else 10,
        1.0 / 255.0,
        normalization,
    )


def _stl10(
    root: Path, download: bool, timeout: float, normalization: Normalization
) -> tuple[ImageData, ImageData]:
    parts: list[Tensor] = []
    for split in ("train", "test"):
        ds = _torchvision("stl10", root, download, timeout, split=split)
        parts += [
            torch.from_numpy(np.ascontiguousarray(ds.data)),
            torch.as_tensor(ds.labels, dtype=torch.long),
        ]
    train_x, train_y, test_x, test_y = parts
    return _pair("stl10", train_x, train_y, test_x, test_y, 10, 1.0 / 255.0, normalization)


def load(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool = True,
    timeout: float = 10.0,
    normalization: Normalization = "pixel_mean",
    seed: int = 0,
) -> tuple[ImageData, ImageData]:
    """(train, test) :class:`ImageData` for ``"cifar10"``, ``"cifar100"``, ``"stl10"``,
    ``"digits"`` or ``"fashion_mnist"``.

    Args:
        root: folder of the torchvision data sets (default :func:`default_root`).
        download: try to download a missing data set. The host is probed first
            with ``timeout`` seconds, and the download runs with that socket
            timeout, so an offline machine gets :class:`DataUnavailableError`
            within seconds instead of a hang.
        normalization: ``"pixel_mean"`` (official RevNet), ``"channel"`` or ``"none"``.
        seed: the digits split's seed (ignored for the others, which have official splits).
    """
    key = _key(name)
    if key == "digits":
        return load_digits(seed=seed, normalization=normalization)
    if key == "fashionmnist":
        from .fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(
            root, download=download, timeout=timeout, normalization=normalization
        )
    if key not in _SOURCES:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    root = Path(root) if root is not None else default_root()
    if key == "stl10":
        return _stl10(root, download, timeout, normalization)
    return _cifar(key, root, download, timeout, normalization)
