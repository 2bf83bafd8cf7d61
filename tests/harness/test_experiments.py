"""revlib.harness.experiments: the command that runs one table row, in --fast mode on the offline
digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

from revlib.harness import experiments

MODEL = "resnet32"


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """``python -m revlib.harness.experiments --model resnet32 --dataset digits --fast``
    (shortened), in a subprocess."""
    out = tmp_path_factory.mktemp("runs") / "row.json"
    cmd = [
        sys.executable,
        "-m",
        "revlib.harness.experiments",
        "--model",
        MODEL,
        "--dataset",
        "digits",
        "--fast",
        "--iterations",
        "4",
        "--threads",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_fast_run_writes_a_valid_results_json(fast_run):
    out, proc = fast_run
    r = json.loads(out.read_text())
    assert r["model"] == MODEL and r["dataset"] == "digits" and r["fast"] is True and r["seed"] == 0
    assert r["recipe"]["iterations"] == 4 and r["recipe"]["milestones"] == [2, 3]
    assert (
        r["recipe"]["momentum"] == 0.9
        and r["recipe"]["weight_decay"] == 2e-4
        and r["recipe"]["batch_size"] == 100
    )
    assert r["iterations"] == 4 and r["train_images"] == 1347 and r["test_images"] == 450
    assert 0.0 <= r["accuracy"] <= 1.0 and abs(r["accuracy"] + r["error"] - 1) < 1e-12
    assert r["params"] == sum(p.numel() for p in experiments.build_model(MODEL, 10, 1).parameters())
    assert (
        r["wall_time_s"] > 0
        and r["hardware"]["device"] in ("cpu", "cuda", "mps")
        and r["hardware"]["name"]
    )
    assert r["versions"]["revlib"] and r["versions"]["torch"] == torch.__version__
    assert r["history"][-1]["step"] == 4 and "test_acc" in r["history"][-1]
    assert "--fast" in r["command"] and r["bn_momentum"] == 0.1
    assert out.with_suffix(".csv").exists() and out.with_suffix(".pt").exists()
    assert "test accuracy" in proc.stdout


def test_rerun_resumes_from_the_checkpoint(fast_run):
    out, _ = fast_run
    first = json.loads(out.read_text())
    n = torch.get_num_threads()
    try:
        again = experiments.main(
            [
                "--model",
                MODEL,
                "--dataset",
                "digits",
                "--fast",
                "--iterations",
                "4",
                "--threads",
                "1",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(n)
    assert again["resumed"] is True and again["iterations"] == 4
    assert again["accuracy"] == first["accuracy"]  # nothing left to train: the same weights
    assert again["history"] == first["history"]


def test_missing_cifar_is_a_clear_exit(tmp_path):
    with pytest.raises(SystemExit) as err:
        experiments.main(
            [
                "--model",
                MODEL,
                "--dataset",
                "cifar10",
                "--no-download",
                "--data-root",
                str(tmp_path),
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
    assert "CIFAR-10 is not in" in str(err.value.code) and "digits" in str(err.value.code)


def test_defaults():
    assert (
        experiments.default_recipe("hamiltonian74") == "chang"
        and experiments.default_recipe("revnet38") == "revnet"
    )
    with pytest.raises(experiments.UnknownModelError, match="unknown model 'resnet9000'.*revnet38"):
        experiments.build_model("resnet9000", 10, 3)


def test_unknown_model_is_a_clear_exit_on_the_command_line(tmp_path):
    with pytest.raises(SystemExit, match="unknown model 'resnet9000'"):
        experiments.main(
            [
                "--model",
                "resnet9000",
                "--dataset",
                "digits",
                "--fast",
                "--no-progress",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
