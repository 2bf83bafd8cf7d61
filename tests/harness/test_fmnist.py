"""Fashion-MNIST: the real files (a missing file fails, it does not skip), where they are looked
for, the split, the augmentation."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from revlib.harness import data
from revlib.harness.data import datasets


def _write_idx(path, array: np.ndarray) -> None:
    """An MNIST-format (IDX) file of uint8 values: magic 0x08 (ubyte), the dimensions, big
    endian."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(
        struct.pack(">I", n) for n in array.shape
    )
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fmnist(folder, n_train: int = 30, n_test: int = 20, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", rng.randint(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(n) % 10)


def test_the_real_fashion_mnist_is_installed_and_complete():
    """The real data set (``make data`` installs it): both splits, their shapes and the
    per-class counts.

    A missing file makes this test fail: the chapter's tables come from this data.
    """
    train, test = data.load("fashion_mnist", download=False)
    assert tuple(train.images.shape) == (60000, 1, 28, 28) and tuple(test.images.shape) == (
        10000,
        1,
        28,
        28,
    )
    assert train.images.dtype == torch.uint8 and train.scale == 1 / 255
    assert train.class_counts() == [6000] * 10 and test.class_counts() == [1000] * 10
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert not torch.equal(train.images[:100], test.images[:100])  # two different splits


def test_nothing_anywhere_is_a_clear_error(tmp_path, monkeypatch):
    """Control: an empty root, no Debian folder and no network give DataUnavailableError naming
    the three ways."""
    monkeypatch.setattr(datasets, "_probe", lambda url, timeout: "no network (test)")
    with pytest.raises(data.DataUnavailableError) as err:
        data.load_fashion_mnist(tmp_path / "empty", debian=tmp_path / "no-debian")
    message = str(err.value)
    assert "no network (test)" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "FashionMNIST('" in message and "download=True" in message
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in message
    with pytest.raises(data.DataUnavailableError, match="switched off"):
        data.load_fashion_mnist(tmp_path / "empty", debian=None, download=False)


def test_the_users_root_comes_before_the_debian_folder(tmp_path):
    """Files in root/FashionMNIST/raw (plain, as torchvision leaves them) win over the Debian
    folder's."""
    _fake_fmnist(tmp_path / "root" / "FashionMNIST" / "raw", gz=False)
    _fake_fmnist(tmp_path / "debian", n_train=40, n_test=10)
    train, test = data.load_fashion_mnist(
        tmp_path / "root", debian=tmp_path / "debian", download=False
    )
    assert (len(train), len(test)) == (30, 20)
    train, test = data.load_fashion_mnist(
        tmp_path / "other", debian=tmp_path / "debian", download=False
    )
    assert (len(train), len(test)) == (40, 10)  # the .gz files of the Debian layout
    assert train.targets.tolist() == [i % 10 for i in range(40)]


def test_validation_split_is_stratified_disjoint_and_normalised_on_training_only(tmp_path):
    _fake_fmnist(tmp_path / "d", n_train=100, n_test=10)
    full, _ = data.load_fashion_mnist(tmp_path / "r", debian=tmp_path / "d", download=False)
    tr, val = data.validation_split(full, 3, seed=0)
    assert (len(tr), len(val)) == (70, 30) and val.class_counts() == [3] * 10 and val.split == "val"
    key = lambda d: {bytes(x.flatten().tolist()) for x in d.images}  # noqa: E731
    assert not key(tr) & key(val)
    assert torch.allclose(tr.mean, tr.images.double().mean(0).float() / 255) and torch.equal(
        tr.mean, val.mean
    )
    again, _ = data.validation_split(full, 3, seed=0)
    other, _ = data.validation_split(full, 3, seed=1)
    assert torch.equal(again.images, tr.images) and not torch.equal(other.images, tr.images)
    with pytest.raises(ValueError):
        data.validation_split(full, 10)


def test_loader_augments_fashion_mnist_with_pad_2_and_flip():
    assert data.augmentation_for("fashion_mnist") == {"pad": 2, "flip": True}
    assert "fashion_mnist" in data.DATASETS
