"""revlib.harness.studies: the digits split, equal budgets, the convergence protocol, the mode comparison."""

from __future__ import annotations

import json

import pytest
import torch

from revlib.harness import studies

TINY = studies.Protocol(check_every=2, patience=2, drops=1, max_checks=12)


@pytest.fixture(scope="module")
def splits() -> studies.Splits:
    return studies.digits_splits()


def test_split_is_stratified_disjoint_and_fixed(splits):
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797 and sizes == [1079, 359, 359]
    rows = [
        set(map(tuple, torch.cat([s.images.flatten(1), s.targets[:, None]], 1).tolist()))
        for s in (splits.train, splits.val, splits.test)
    ]
    # the digits hold a few duplicate images, so compare the index sets through a re-split
    again = studies.digits_splits()
    assert torch.equal(again.test.images, splits.test.images) and torch.equal(
        again.val.targets, splits.val.targets
    )
    assert (
        len(rows[1] & rows[2]) <= 2
    )  # no shared (image, label) beyond the data set's own duplicates
    for part in (splits.val, splits.test):
        counts = part.class_counts()
        assert max(counts) - min(counts) <= 2  # 0.2 of each class
    other = studies.digits_splits(seed=1)
    assert not torch.equal(other.test.targets, splits.test.targets) or not torch.equal(
        other.test.images, splits.test.images
    )


def test_normalisation_uses_the_training_split_only(splits):
    x = splits.train.normalize(splits.train.images)
    assert x.mean(0).abs().max() < 1e-5  # per-pixel mean image subtracted
    assert (
        splits.val.normalize(splits.val.images).mean(0).abs().max() > 1e-3
    )  # not re-centred on the validation split


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="studies.digits_splits"):
        studies.digits_splits(val_fraction=0.6, test_fraction=0.5)


def test_architectures_have_equal_budgets_and_both_modes():
    counts = {name: studies.count_parameters(studies.build(name)) for name in studies.ARCHITECTURES}
    assert max(counts.values()) / min(counts.values()) < 1.05
    x = torch.randn(3, 1, 8, 8)
    for name in studies.ARCHITECTURES:
        if name == "ResNet-8":
            continue
        torch.manual_seed(0)
        a = studies.build(name, "autograd")
        torch.manual_seed(0)
        r = studies.build(name, "reversible")
        assert torch.equal(a(x), r(x)), name
    with pytest.raises(KeyError, match="unknown network"):
        studies.build("ResNet-9000")


def test_training_drops_the_rate_on_plateaus_and_keeps_the_best_weights(splits):
    r = studies.train_to_convergence("ResNet-8", 0, splits, fraction=0.05, protocol=TINY)
    lrs = [c["lr"] for c in r["curve"]]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == TINY.lr
    accs = [c["val_acc"] for c in r["curve"]]
    assert r["val_acc"] == max(accs) and r["best_step"] == r["curve"][accs.index(max(accs))]["step"]
    if r["converged"]:  # stopped on a plateau: the last `patience` checks did not beat the best
        assert len(set(lrs)) == TINY.drops + 1
        assert max(accs[-TINY.patience :]) <= max(accs[: -TINY.patience])
    else:
        assert len(r["curve"]) == TINY.max_checks
    assert r["train_images"] == 50 and 0 <= r["test_acc"] <= 1
    # the test accuracy is that of the restored best weights: the same protocol run again gives the same number
    again = studies.train_to_convergence("ResNet-8", 0, splits, fraction=0.05, protocol=TINY)
    assert again["test_acc"] == r["test_acc"] and again["curve"] == r["curve"]


def test_plateau_rule_stops_early_with_no_patience(splits):
    """Control: with patience 1 and no drops, training stops at the first check without a new best."""
    quick = studies.Protocol(check_every=1, patience=1, drops=0, max_checks=50)
    r = studies.train_to_convergence(
        "ResNet-8", 1, splits, fraction=0.05, protocol=quick, test=False
    )
    accs = [c["val_acc"] for c in r["curve"]]
    assert r["converged"] and len(accs) < 50 and accs[-1] <= max(accs[:-1])
    assert all(b > a for a, b in zip(accs[:-2], accs[1:-1]))  # every earlier check was a new best
    assert "test_acc" not in r


def test_compare_modes_same_first_step_and_gradients(splits):
    c = studies.compare_modes("RevNet-22", 0, splits, steps=4, cosine_every=2, control=1e-7)
    assert len(c["autograd"]["loss"]) == len(c["reversible"]["loss"]) == 4
    assert c["autograd"]["loss"][0] == c["reversible"]["loss"][0]  # same weights, same batch
    assert (
        c["control"]["loss"][0] != c["autograd"]["loss"][0]
    )  # control: the perturbation is applied
    assert [x["step"] for x in c["cosine"]] == [0, 2]
    for x in c["cosine"]:
        assert x["fp32"] > 1 - 1e-9
        assert (
            x["bf16"] < 1 - 1e-9 or x["bf16_vs_fp32"] < 1 - 1e-9
        )  # bf16 is visibly coarser than float32


def test_gradient_cosine_sees_a_wrong_gradient(splits):
    """Control: a reference gradient that is not the model's gives a cosine far from 1."""
    torch.manual_seed(0)
    model = studies.build("RevNet-22", "reversible")
    x, y = splits.train.normalize(splits.train.images[:20]), splits.train.targets[:20]
    right = studies.gradient_cosine(model, x, y, None)
    n = sum(p.numel() for p in model.parameters())
    wrong = studies.gradient_cosine(
        model, x, y, None, reference=torch.randn(n, dtype=torch.float64)
    )
    assert right["fp32"] > 1 - 1e-9 and abs(wrong["fp32"]) < 0.5


def test_summaries_and_separation():
    s = studies.summarize([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["n"] == 3
    assert not studies.separated([90.0, 91.0, 92.0], [90.5, 91.5, 92.5])[2]
    diff, se, sep = studies.separated([95.0, 95.2, 94.8], [90.0, 90.3, 89.9])
    assert sep and diff > 4 and se < 0.3
    with pytest.raises(ValueError):
        studies.summarize([1.0])


def test_load_results_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m revlib.harness.studies grid"):
        studies.load_results(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a revlib.harness.studies results file"):
        studies.load_results(bad)


def test_load_results_reads_the_file_shipped_with_revlib(tmp_path):
    """Without a path the chapter's results come from the package, wherever revlib is installed."""
    got = studies.load_results()
    assert got["format"] == "revlib.harness.studies/1" and len(got["runs"]) > 0
    with pytest.raises(FileNotFoundError):
        studies.load_results(tmp_path / "digits_study.json")
