"""Small stand-ins for CIFAR-10, CIFAR-100 and STL-10, in the exact on-disk formats torchvision
reads.

No data set can be downloaded in CI, so the tests write these instead: a few
hundred random images each, in the official folders and file formats
(``cifar-10-batches-py``: pickled dicts ``{"data": uint8 (N, 3072), "labels": [...]}``;
``cifar-100-python``: the same with ``"fine_labels"``/``"coarse_labels"``;
``stl10_binary``: raw uint8 ``*_X.bin`` in column-major (N, 3, 96, 96) and
1-based ``*_y.bin``). They are random, so they check code paths only: nothing
computed on them is an accuracy.

torchvision also compares each file's MD5 with the official archive's, which a
stand-in cannot match; :func:`accept_standin_checksums` replaces that check by
"the file exists" while everything else in the loaders (paths, parsing, layout)
runs unchanged. A kernel or subprocess gets the same with
``python -c "import standin_data; standin_data.accept_standin_checksums()"``-style
preambles (see :data:`KERNEL_PREAMBLE`).

    python tests/standin_data.py DIR    # write all three into DIR
"""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "StandIn",
    "write_cifar10",
    "write_cifar100",
    "write_stl10",
    "write_all",
    "accept_standin_checksums",
    "KERNEL_PREAMBLE",
]

SIZES = {"cifar10": (400, 100), "cifar100": (300, 100), "stl10": (200, 100)}


@dataclass
class StandIn:
    """What was written: images (N, C, H, W) uint8 and labels (0-based), per split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def _images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)


def _labels(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    """Every class equally often (as in the real sets), in random order."""
    return rng.permutation(np.arange(n) % classes).astype(np.int64)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(
    root: Path,
    n_train: int = SIZES["cifar10"][0],
    n_test: int = SIZES["cifar10"][1],
    seed: int = 10,
) -> StandIn:
    """``root/cifar-10-batches-py``: data_batch_1..5, test_batch, batches.meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    s = StandIn(
        _images(rng, n_train, 32),
        _labels(rng, n_train, 10),
        _images(rng, n_test, 32),
        _labels(rng, n_test, 10),
    )
    for i, (x, y) in enumerate(
        zip(np.array_split(s.train_images, 5), np.array_split(s.train_labels, 5), strict=True),
        start=1,
    ):
        _pickle(
            folder / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": y.tolist(),
                "data": x.reshape(len(x), -1),
            },
        )
    _pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": s.test_labels.tolist(),
            "data": s.test_images.reshape(n_test, -1),
        },
    )
    _pickle(
        folder / "batches.meta", {"label_names": [f"class{c}" for c in range(10)], "num_vis": 3072}
    )
    return s


def write_cifar100(
    root: Path,
    n_train: int = SIZES["cifar100"][0],
    n_test: int = SIZES["cifar100"][1],
    seed: int = 100,
) -> StandIn:
    """``root/cifar-100-python``: train, test, meta (fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    s = StandIn(
        _images(rng, n_train, 32),
        _labels(rng, n_train, 100),
        _images(rng, n_test, 32),
        _labels(rng, n_test, 100),
    )
    for name, x, y in (
        ("train", s.train_images, s.train_labels),
        ("test", s.test_images, s.test_labels),
    ):
        _pickle(
            folder / name,
            {
                "fine_labels": y.tolist(),
                "coarse_labels": (y // 5).tolist(),
                "data": x.reshape(len(x), -1),
            },
        )
    _pickle(
        folder / "meta",
        {
            "fine_label_names": [f"fine{c}" for c in range(100)],
            "coarse_label_names": [f"coarse{c}" for c in range(20)],
        },
    )
    return s


def write_stl10(
    root: Path, n_train: int = SIZES["stl10"][0], n_test: int = SIZES["stl10"][1], seed: int = 96
) -> StandIn:
    """``root/stl10_binary``: train/test/unlabeled ``_X.bin`` (column-major images), ``_y.bin``
    (labels 1..10)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    s = StandIn(
        _images(rng, n_train, 96),
        _labels(rng, n_train, 10),
        _images(rng, n_test, 96),
        _labels(rng, n_test, 10),
    )
    for name, x, y in (
        ("train", s.train_images, s.train_labels),
        ("test", s.test_images, s.test_labels),
    ):
        # the official files store each channel column by column: (N, C, W, H) in C order
        np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tofile(folder / f"{name}_X.bin")
        (y + 1).astype(np.uint8).tofile(folder / f"{name}_y.bin")
    _images(rng, 10, 96).tofile(folder / "unlabeled_X.bin")
    (folder / "class_names.txt").write_text("\n".join(f"class{c}" for c in range(10)) + "\n")
    (folder / "fold_indices.txt").write_text(
        "\n".join(" ".join(map(str, range(i, n_train, 10))) for i in range(10)) + "\n"
    )
    return s


def write_all(root: Path) -> dict[str, StandIn]:
    """All three stand-ins under ``root``; returns what was written, by data set name."""
    return {
        "cifar10": write_cifar10(root),
        "cifar100": write_cifar100(root),
        "stl10": write_stl10(root),
    }


def accept_standin_checksums() -> None:
    """Let torchvision's CIFAR and STL-10 readers accept files whose MD5 is not the official one.

    torchvision checks ``check_integrity(path, md5)`` for each file before reading;
    here that becomes "the file exists", so a missing or misnamed file still fails.
    """
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.stl10 as stl10

    def exists(fpath: str | os.PathLike, md5: str | None = None) -> bool:
        return os.path.isfile(fpath)

    cifar.check_integrity = exists
    stl10.check_integrity = exists


# Run first in a notebook kernel (or ``python -c``) that is to read the stand-ins.
KERNEL_PREAMBLE = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
    "import standin_data; standin_data.accept_standin_checksums()\n"
    "sys.path.pop(0)"
)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    write_all(Path(sys.argv[1]))
    print(f"stand-ins for CIFAR-10, CIFAR-100 and STL-10 written to {sys.argv[1]}")
