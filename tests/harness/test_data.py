"""revlib.harness.data: the offline digits set, class-balanced subsets, augmentation, missing-data
errors."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from revlib.harness import data
from revlib.harness.data import datasets


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_digits_split_is_fixed_stratified_and_complete(digits):
    train, test = digits
    assert (len(train), len(test)) == (1347, 450)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert train.num_classes == 10 and train.in_channels == 1 and train.image_size == (8, 8)
    # stratified: every class has about a quarter of its images in the test split
    for c_train, c_test in zip(train.class_counts(), test.class_counts(), strict=True):
        assert abs(c_test / (c_train + c_test) - 0.25) < 0.01
    # the same seed gives the same split, another seed another one
    again_train, _ = data.load("digits")
    assert torch.equal(again_train.images, train.images) and torch.equal(
        again_train.targets, train.targets
    )
    other_train, _ = data.load_digits(seed=1)
    assert not torch.equal(other_train.targets, train.targets)
    # every one of the 1,797 images is in exactly one split
    from sklearn.datasets import load_digits

    allx = torch.cat([train.images, test.images]).flatten(1)
    ref = torch.as_tensor(load_digits().images, dtype=torch.uint8).flatten(1)
    key = lambda t: sorted(map(bytes, t.numpy()))  # noqa: E731
    assert key(allx) == key(ref)


def test_normalisations(digits):
    train, _ = digits
    x = train.normalize(train.images)
    assert (
        x.mean(0).abs().max() < 1e-5
    )  # pixel_mean: each pixel averages to zero over the training set
    tr_c, _ = data.load_digits(normalization="channel")
    xc = tr_c.normalize(tr_c.images)
    assert abs(xc.mean().item()) < 1e-4 and abs(xc.std().item() - 1) < 1e-3
    with pytest.raises(ValueError):
        data.load_digits(normalization="nonsense")


@pytest.mark.parametrize("fraction", [0.005, 0.01, 0.05, 0.2])
def test_balanced_subset_counts_cifar_sized(fraction):
    targets = torch.arange(10).repeat_interleave(5000)[
        torch.randperm(50000)
    ]  # CIFAR-10's 5,000 per class
    idx = data.balanced_subset(targets, fraction, seed=3)
    counts = torch.bincount(targets[idx], minlength=10)
    k = round(fraction * 5000)
    assert counts.tolist() == [k] * 10  # 25 per class at 0.5 %, 1,000 at 20 %
    assert len(set(idx.tolist())) == len(idx)  # no repeats
    assert torch.equal(idx, data.balanced_subset(targets, fraction, seed=3))  # seeded
    assert not torch.equal(idx, data.balanced_subset(targets, fraction, seed=4))


def test_balanced_subset_on_digits(digits):
    train, _ = digits
    for fraction in (0.05, 0.1, 0.5):
        sub = train.subset(data.balanced_subset(train, fraction, seed=0))
        k = round(fraction * len(train) / 10)
        assert sub.class_counts() == [k] * 10
        assert torch.equal(
            sub.mean, train.mean
        )  # the subset keeps the full training set's normalisation
    with pytest.raises(ValueError, match="fewer than"):
        data.balanced_subset(train, 1.0)  # 134.7 per class asked, some classes have only 130
    with pytest.raises(ValueError):
        data.balanced_subset(train, 0.0)


def test_pad_crop_flip_matches_slicing():
    x = torch.randn(5, 3, 6, 7)
    oy, ox = torch.tensor([0, 1, 2, 4, 3]), torch.tensor([4, 0, 2, 1, 3])
    flip = torch.tensor([True, False, True, False, False])
    out = data.pad_crop_flip(x, 2, oy, ox, flip)
    xp = nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(5):
        ref = xp[i, :, oy[i] : oy[i] + 6, ox[i] : ox[i] + 7]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    # offset (pad, pad) without flip is the identity
    same = data.pad_crop_flip(x, 2, torch.full((5,), 2), torch.full((5,), 2), None)
    assert torch.equal(same, x)


def test_tensor_loader_augmentation_and_determinism(digits):
    train, test = digits
    loader = data.TensorLoader(train, 100, seed=0)
    assert (loader.pad, loader.flip) == (
        1,
        False,
    )  # digits: pad 1, no flip (a mirrored digit is another symbol)
    assert len(loader) == 14
    batches = list(loader)
    assert sum(len(y) for _, y in batches) == 1347
    torch.manual_seed(12345)  # the global RNG plays no part
    again = list(data.TensorLoader(train, 100, seed=0))
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(batches, again, strict=True)
    )
    # augmented images are shifted copies: every 8x8 crop of the padded image keeps most of the
    # pixels
    plain = list(data.TensorLoader(test, 450, shuffle=False, augment=False))
    x, y = plain[0]
    assert torch.allclose(x, test.normalize(test.images)) and torch.equal(y, test.targets)
    cifar_like = data.ImageData(
        torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8),
        torch.arange(10),
        10,
        1 / 255,
        torch.zeros(3, 32, 32),
        torch.ones(3, 1, 1),
        "cifar10",
        "train",
    )
    loader = data.TensorLoader(cifar_like, 10, seed=0)
    assert (loader.pad, loader.flip) == (4, True)
    assert data.augmentation_for("stl10") == {"pad": 12, "flip": True}


def test_dataloader_path(digits):
    train, _ = digits
    train.transform = data.RandomCropFlip(pad=1, flip=False)
    try:
        dl = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
        x, y = next(iter(dl))
        assert x.shape == (64, 1, 8, 8) and y.dtype == torch.int64
    finally:
        train.transform = None


def test_random_crop_flip_gives_padded_crops_and_flips():
    """torchvision's v2 transforms, per image: each output is one of the 5x5 crops of the
    zero-padded image, or its mirror."""
    torch.manual_seed(0)
    x = torch.randn(3, 6, 7)
    xp = nn.functional.pad(x, (2, 2, 2, 2))
    crops = [xp[:, i : i + 6, j : j + 7] for i in range(5) for j in range(5)]
    mirrored = [c.flip(-1) for c in crops]
    outs = [data.RandomCropFlip(pad=2, flip=True)(x) for _ in range(40)]
    which = [
        next(k for k, c in enumerate(crops + mirrored) if torch.equal(o, c)) for o in outs
    ]  # StopIteration: not a crop
    assert len(set(which)) > 10 and any(k >= 25 for k in which) and any(k < 25 for k in which)
    unflipped = [data.RandomCropFlip(pad=2, flip=False)(x) for _ in range(20)]
    assert all(any(torch.equal(o, c) for c in crops) for o in unflipped)


def test_missing_dataset_gives_clear_error_without_download(tmp_path):
    t = time.perf_counter()
    with pytest.raises(data.DataUnavailableError) as err:
        data.load("cifar10", tmp_path, download=False)
    msg = str(err.value)
    assert "CIFAR-10 is not in" in msg and str(tmp_path) in msg
    assert "cifar-10-python.tar.gz" in msg and "digits" in msg and "download=False" in msg
    assert time.perf_counter() - t < 10


@pytest.mark.parametrize(
    "name,folder", [("cifar100", "cifar-100-python"), ("stl10", "stl10_binary")]
)
def test_missing_dataset_offline_download(tmp_path, monkeypatch, name, folder):
    # Offline (simulated, so that a CI machine with internet downloads nothing): the probe fails.
    monkeypatch.setattr(datasets, "_probe", lambda url, timeout: "simulated: no network")
    t = time.perf_counter()
    with pytest.raises(data.DataUnavailableError, match="simulated: no network") as err:
        data.load(name, tmp_path, download=True)
    assert folder in str(err.value)
    assert time.perf_counter() - t < 10


def test_download_failure_inside_torchvision_is_translated(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    class Broken:
        def __init__(self, root, download=False, **kw):
            if download:
                raise urllib.error.URLError("connection reset (simulated)")
            raise RuntimeError(
                "Dataset not found or corrupted. You can use download=True to download it"
            )

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Broken)
    monkeypatch.setattr(
        datasets, "_probe", lambda url, timeout: None
    )  # the host answers, the download then fails
    with pytest.raises(data.DataUnavailableError, match="connection reset") as err:
        data.load("cifar10", tmp_path)
    assert (
        err.value.__cause__ is None and err.value.__suppress_context__
    )  # no traceback from inside torchvision


def test_network_probe_is_bounded(monkeypatch):
    # A server that never answers (simulated: the request hangs for 30 s) costs the probe its
    # timeout, no more.
    import urllib.request

    def hang(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(urllib.request, "urlopen", hang)
    t = time.perf_counter()
    reason = datasets._probe("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", timeout=0.3)
    assert reason is not None and "within 0.3 s" in reason
    assert time.perf_counter() - t < 2.0


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown data set"):
        data.load("mnist")
