"""Fashion-MNIST (Xiao et al. 2017) from its IDX files: torchvision's folder, Debian's package, or
a download, in that order."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from . import datasets as _datasets
from .datasets import (
    _SOURCES,
    DataUnavailableError,
    ImageData,
    Normalization,
    _pair,
    default_root,
)
from .splits import validation_split

__all__ = ["FASHION_MNIST_DEBIAN", "FmnistSplits", "fmnist_splits", "load_fashion_mnist"]

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's package ``dataset-fashion-mnist`` puts the four ``*-ubyte.gz`` files."""

_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_idx(path: Path) -> Tensor:
    """One MNIST-format (IDX) file, plain or ``.gz``, through torchvision's reader."""
    import gzip
    import tempfile

    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    if path.suffix != ".gz":
        return read_sn3_pascalvincent_tensor(str(path), strict=False)
    with tempfile.TemporaryDirectory() as tmp:  # torchvision's reader opens a file by name
        plain = Path(tmp) / path.stem
        with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
            dst.write(src.read())
        return read_sn3_pascalvincent_tensor(str(plain), strict=False)


def _idx_folder(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    """The four files in ``folder`` (plain or ``.gz``), or None if one is missing."""
    found = {}
    for split, names in _FMNIST_FILES.items():
        paths = []
        for name in names:
            options = [folder / name, folder / f"{name}.gz"]
            hit = next((p for p in options if p.is_file()), None)
            if hit is None:
                return None
            paths.append(hit)
        found[split] = (paths[0], paths[1])
    return found


def _fmnist_unavailable(root: Path, debian: Path, reason: str) -> DataUnavailableError:
    raw = root.resolve() / "FashionMNIST" / "raw"
    return DataUnavailableError(
        f"Fashion-MNIST is neither in {raw} nor in {debian}, and could not be downloaded "
        f"({reason}).\n"
        f"To get it, do one of these:\n"
        f"  * on Debian or Ubuntu, as root: apt-get install dataset-fashion-mnist "
        f"(files in {FASHION_MNIST_DEBIAN});\n"
        f'  * online: python -c "import torchvision; '
        f"torchvision.datasets.FashionMNIST('{root}', download=True)\";\n"
        f"  * copy the four *-ubyte.gz files of https://github.com/zalandoresearch/fashion-mnist "
        f"into {raw}\n"
        f"    (or pass root= / set $REVLIB_DATA to a folder whose FashionMNIST/raw holds them)."
    )


def load_fashion_mnist(
    root: str | os.PathLike | None = None,
    *,
    download: bool = True,
    timeout: float = 10.0,
    normalization: Normalization = "pixel_mean",
    debian: str | os.PathLike | None = FASHION_MNIST_DEBIAN,
) -> tuple[ImageData, ImageData]:
    """Fashion-MNIST (Xiao et al. 2017) as (train, test) :class:`ImageData`: 60,000 and 10,000
    grey 28x28 images.

    Looks, in order, in ``root/FashionMNIST/raw`` (torchvision's layout, plain
    or ``.gz`` files), in ``debian`` (the folder of Debian's package
    ``dataset-fashion-mnist``; ``None`` skips it), then downloads with
    ``torchvision.datasets.FashionMNIST(root, download=True)`` if ``download``
    and the host answers within ``timeout`` seconds. Otherwise raises
    :class:`DataUnavailableError` naming the three ways to get the files.
    Every file is parsed by torchvision's MNIST-format reader. Pixels are
    stored as ``uint8`` with ``scale = 1/255``; the normalisation comes from
    the training split.
    """
    root = Path(root) if root is not None else default_root()
    raw = root / "FashionMNIST" / "raw"
    debian_path = Path(debian) if debian is not None else None
    files = _idx_folder(raw) or (_idx_folder(debian_path) if debian_path is not None else None)
    if files is None:
        if not download:
            raise _fmnist_unavailable(
                root, debian_path or FASHION_MNIST_DEBIAN, "downloading was switched off"
            )
        reason = _datasets._probe(_SOURCES["fashionmnist"].url, timeout)
        if reason is not None:
            raise _fmnist_unavailable(root, debian_path or FASHION_MNIST_DEBIAN, reason)
        import torchvision

        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            root.mkdir(parents=True, exist_ok=True)
            torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        except Exception as exc:  # network errors, HTTP errors, checksum failures
            raise _fmnist_unavailable(
                root, debian_path or FASHION_MNIST_DEBIAN, f"{type(exc).__name__}: {exc}"
            ) from None
        finally:
            socket.setdefaulttimeout(old)
        files = _idx_folder(raw)
        if files is None:
            raise _fmnist_unavailable(
                root, debian_path or FASHION_MNIST_DEBIAN, "the download left no files"
            )
    parts = []
    for split in ("train", "test"):
        images, labels = files[split]
        parts += [_read_idx(images).unsqueeze(1).contiguous(), _read_idx(labels).long()]
    train_x, train_y, test_x, test_y = parts
    return _pair("fashion_mnist", train_x, train_y, test_x, test_y, 10, 1.0 / 255.0, normalization)


@dataclass(frozen=True)
class FmnistSplits:
    """Fashion-MNIST's training (55,000), validation (5,000, held out of the training set) and
    test (10,000) splits."""

    train: ImageData
    val: ImageData
    test: ImageData


def fmnist_splits(val_per_class: int = 500, seed: int = 0, root: str | None = None) -> FmnistSplits:
    """Fashion-MNIST with ``val_per_class`` training images of each class held out for validation.

    The normalisation (per-pixel mean image, as in the official RevNet code) is
    computed from the remaining training images only.
    """
    full, test = load_fashion_mnist(root)
    tr, val = validation_split(full, val_per_class, seed=seed)
    test = ImageData(test.images, test.targets, 10, tr.scale, tr.mean, tr.std, tr.name, "test")
    return FmnistSplits(tr, val, test)
