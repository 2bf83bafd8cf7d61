"""Fashion-MNIST: the real files (a missing file fails, it does not skip), where they are looked
for, the split, the one-epoch study."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from revlib.harness import data, fmnist_study
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


def test_networks_keep_the_papers_depths_and_scale_every_width_by_one_factor():
    from revlib import models

    full = {
        "ResNet-32": models.resnet32(in_channels=1),
        "RevNet-38": models.revnet38(in_channels=1),
        "Hamiltonian-74": models.hamiltonian74(in_channels=1),
        "Midpoint-26": models.midpoint26(in_channels=1),
        "Leapfrog-26": models.leapfrog26(in_channels=1),
    }
    for name, ref in full.items():
        ours = fmnist_study.build(
            name, 1.0, "reversible" if name in fmnist_study.REVERSIBLE else "autograd"
        )
        assert models.count_parameters(ours) == models.count_parameters(ref), name
        small = fmnist_study.build(name, 0.25)
        assert small.units == ref.units and small.widths == fmnist_study.scaled(ref.widths, 0.25), (
            name
        )
    assert fmnist_study.scaled((16, 32, 64, 112), 0.25) == (4, 8, 16, 28)
    with pytest.raises(ValueError):
        fmnist_study.build("ResNet-32", mode="reversible")


def test_schedule_jobs_and_statistics():
    s = fmnist_study.Schedule()
    assert [s.lr_at(k, 400) for k in (0, 199, 200, 299, 300, 399)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3]
    )
    jobs = fmnist_study.jobs(fmnist_study.GRID)
    first = jobs[
        :5
    ]  # seed 0 of every network on the full set first, the reversible ones in mode "reversible"
    assert [j[0] for j in first] == list(fmnist_study.NETWORKS) and {j[1] for j in first} == {1.0}
    assert [j[3] for j in first] == ["autograd"] + ["reversible"] * 4
    full = [j for j in jobs if j[1] == 1.0]
    assert jobs[: len(full)] == full and len(full) == 5 * len(fmnist_study.GRID.seeds)
    small = {(j[0], j[1]) for j in jobs if j[1] < 1}
    assert len({f for _, f in small}) + 1 >= 6  # at least six training-set sizes with the full set
    assert all(
        sum(1 for j in jobs if j[1] == f and j[0] == "ResNet-32") >= 5
        for f in fmnist_study.GRID.fractions
        if f <= fmnist_study.GRID.more_seeds_below
    )
    assert fmnist_study.detectable_difference(1.0) == pytest.approx(2.8)


def test_a_run_is_cached_and_collected(tmp_path, monkeypatch):
    """A tiny grid on fake data: each run lands in its own JSON, a rerun skips it, missing runs
    are listed."""
    _fake_fmnist(tmp_path / "d", n_train=70, n_test=20)
    full, test = data.load_fashion_mnist(tmp_path / "r", debian=tmp_path / "d", download=False)
    tr, val = data.validation_split(full, 1)
    splits = fmnist_study.FmnistSplits(tr, val, test)
    monkeypatch.setattr(fmnist_study, "fmnist_splits", lambda: splits)
    grid = fmnist_study.Grid(
        updates=2,
        seeds=(0,),
        small_models=("ResNet-32",),
        fractions=(0.5,),
        small_updates=1,
        small_seeds=(0,),
        small_seeds_more=(),
    )
    monkeypatch.setattr(fmnist_study, "NETWORKS", ("ResNet-32", "RevNet-38"))
    result = fmnist_study.run_grid(grid, tmp_path / "cache", log=lambda s: None)
    assert not result["missing"] and len(result["runs"]) == 3
    rev = next(r for r in result["runs"] if r["model"] == "RevNet-38")
    assert rev["mode"] == "reversible" and rev["updates"] == 2 and "val_acc" in rev
    sub = next(r for r in result["runs"] if r["fraction"] == 0.5)
    assert sub["train_images"] == 30 and "val_acc" not in sub
    files = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 3
    files[0].unlink()
    assert len(fmnist_study.collect(grid, tmp_path / "cache")["missing"]) == 1
    mtime = files[1].stat().st_mtime_ns
    fmnist_study.run_grid(grid, tmp_path / "cache", log=lambda s: None)
    assert (
        files[1].stat().st_mtime_ns == mtime and files[0].exists()
    )  # only the missing run ran again
    out = tmp_path / "out.json"
    out.write_text(json.dumps(fmnist_study.collect(grid, tmp_path / "cache")))
    assert fmnist_study.load_results(out)["format"] == "revlib.harness.fmnist_study/1"


def test_the_shipped_results_hold_the_whole_grid():
    """The results file shipped with revlib (chapter 7's tables) has every run of the grid, with
    its mode recorded."""
    r = fmnist_study.load_results()
    assert not r["missing"] and r["grid"]["width"] == 0.25
    full = [x for x in r["runs"] if x["fraction"] == 1.0]
    for name in fmnist_study.NETWORKS:
        mine = [x for x in full if x["model"] == name]
        assert len({x["seed"] for x in mine}) >= 3 and all(x["train_images"] == 55000 for x in mine)
        if name in fmnist_study.REVERSIBLE:
            assert any(x["mode"] == "reversible" for x in mine), name
        assert all(0.1 < x["test_acc"] < 1 for x in mine)
    sizes = {x["fraction"] for x in r["runs"] if x["model"] in r["grid"]["small_models"]}
    assert len(sizes) >= 6
