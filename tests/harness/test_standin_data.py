"""The CIFAR-10/100 and STL-10 code paths, on stand-ins in torchvision's on-disk formats
(tests/standin_data.py).

The stand-ins are random images, so nothing here is an accuracy: these tests
check that the real loaders (``download=False``) read every file and pixel
into the right place, that the paper recipes shortened by ``--iterations`` run
through ``python -m revlib.harness.experiments``, resume from their checkpoint,
and write the results JSON the chapters tabulate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT

from revlib.harness import data, experiments

TESTS = ROOT / "tests"

SHAPES = {"cifar10": (3, 32, 32, 10), "cifar100": (3, 32, 32, 100), "stl10": (3, 96, 96, 10)}


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_loader_reads_every_image_and_label_where_it_belongs(standin_root, name):
    root, written = standin_root
    train, test = data.load(name, root, download=False, normalization="none")
    c, h, w, k = SHAPES[name]
    for split, want_x, want_y in (
        (train, written[name].train_images, written[name].train_labels),
        (test, written[name].test_images, written[name].test_labels),
    ):
        assert split.images.shape == (len(want_y), c, h, w) and split.images.dtype == torch.uint8
        assert split.num_classes == k and split.name == name
        assert torch.equal(
            split.images, torch.from_numpy(want_x)
        )  # same pixels, same layout (N, C, H, W)
        assert torch.equal(split.targets, torch.from_numpy(want_y))  # 0-based labels in file order
    assert data.augmentation_for(name)["flip"] is True


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_a_missing_data_set_is_a_clear_error_without_network(tmp_path, name):
    with pytest.raises(data.DataUnavailableError, match="download=False"):
        data.load(name, tmp_path, download=False)


def run_experiment(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m revlib.harness.experiments ARGS`` in a subprocess that accepts the stand-ins'
    checksums."""
    code = (
        "import sys, standin_data; standin_data.accept_standin_checksums(); "
        "from revlib.harness.experiments import main; main(sys.argv[1:])"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )


ROWS = [  # (model, data set, extra arguments): one row of each of the book's tables, shortened
    ("revnet38", "cifar10", []),
    ("resnet32", "cifar100", ["--fraction", "0.5"]),
    ("midpoint26", "stl10", ["--batch-size", "8"]),
]


@pytest.mark.parametrize("model,dataset,extra", ROWS, ids=[f"{m}-{d}" for m, d, _ in ROWS])
def test_paper_recipe_shortened_runs_resumes_and_writes_its_results(
    standin_root, tmp_path, model, dataset, extra
):
    root, written = standin_root
    out = tmp_path / "runs" / f"{model}_{dataset}.json"
    args = [
        "--model",
        model,
        "--dataset",
        dataset,
        "--data-root",
        str(root),
        "--no-download",
        "--iterations",
        "2",
        "--threads",
        "1",
        "--no-progress",
        "--eval-batch-size",
        "50",
        "--out",
        str(out),
        *extra,
    ]
    first = run_experiment(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    r = json.loads(out.read_text())
    assert (r["model"], r["dataset"], r["iterations"]) == (model, dataset, 2)
    assert r["recipe"]["iterations"] == 2
    assert r["recipe"]["momentum"] == 0.9 and r["fast"] is False and r["resumed"] is False
    n_train = len(written[dataset].train_labels)
    classes = SHAPES[dataset][3]
    per_class = (
        round(float(extra[1]) * n_train / classes) if "--fraction" in extra else n_train // classes
    )
    assert r["train_images"] == per_class * classes and r["test_images"] == len(
        written[dataset].test_labels
    )
    assert r["params"] == sum(
        p.numel() for p in experiments.build_model(model, SHAPES[dataset][3], 3).parameters()
    )
    assert 0.0 <= r["accuracy"] <= 1.0 and r["hardware"]["device"] == "cpu"
    assert out.with_suffix(".pt").exists() and out.with_suffix(".csv").exists()
    # started again with the same arguments, it continues from the checkpoint (nothing left to
    # train)
    again = run_experiment(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    r2 = json.loads(out.read_text())
    assert r2["resumed"] is True and r2["iterations"] == 2 and r2["accuracy"] == r["accuracy"]
    assert r2["history"] == r["history"]
