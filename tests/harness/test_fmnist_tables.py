"""revlib.harness.fmnist_tables on a made-up results file: which runs each table reads, and its
statistics (against revlib.harness.stats, itself checked against scipy in test_stats)."""

from __future__ import annotations

import pytest

from revlib.harness import fmnist_tables as T
from revlib.harness import stats


def run(study, model, seed, acc, fraction=1.0, **extra):
    return {"study": study, "model": model, "seed": seed, "fraction": fraction,
            "test_acc": acc, **extra}  # fmt: skip


MAIN = {
    "ResNet-32": [0.925, 0.927, 0.924, 0.926, 0.925],
    "RevNet-38": [0.926, 0.924, 0.925, 0.927, 0.925],
    "Hamiltonian-74": [0.910, 0.912, 0.908],
    "Midpoint-26": [0.915, 0.917],
    "Leapfrog-26": [0.920],
}


def results():
    runs = [run("main", m, s, a) for m, accs in MAIN.items() for s, a in enumerate(accs)]
    runs += [run("stepsize", "Hamiltonian-74", s, a) for s, a in enumerate([0.92, 0.921, 0.919])]
    runs += [run("baseline", "Logistic regression", 0, 0.84), run("baseline", "MLP", 0, 0.89)]
    runs.append({"study": "main", "model": "RevNet-38", "seed": 9, "fraction": 1.0})  # unfinished
    for s in range(4):
        for f, base in [(0.01, 0.70), (0.02, 0.75)]:
            runs.append(run("small", "ResNet-32", s, base + 0.01 * s, f))
            runs.append(run("small", "Hamiltonian-74", s, base + 0.01 * s + 0.02, f))
            runs.append(run("baseline", "Logistic regression", s, base + 0.05, f))
    runs.append(run("small", "ResNet-32", 4, 0.5, 0.01))  # no Hamiltonian partner: not paired
    return {"runs": runs}


def test_accuracies_are_points_by_seed_of_finished_runs_only():
    acc = T.accuracies(results(), "main", "RevNet-38")
    assert sorted(acc) == [0, 1, 2, 3, 4]
    assert acc[0] == pytest.approx(92.6)


def test_main_table_compares_each_network_to_resnet32_with_holm_and_tost():
    rows = {r["model"]: r for r in T.main_table(results())}
    assert rows["ResNet-32"]["vs_reference"] is None
    assert rows["Leapfrog-26"]["vs_reference"] is None  # one seed: no comparison
    rev = rows["RevNet-38"]
    ref = [100 * a for a in MAIN["ResNet-32"]]
    mine = [100 * a for a in MAIN["RevNet-38"]]
    assert rev["vs_reference"] == stats.welch(mine, ref)
    assert rev["equivalence"]["equivalent"]  # 0.02 points apart, spread 0.1: inside +-0.5
    ham = rows["Hamiltonian-74"]
    assert not ham["equivalence"]["equivalent"] and ham["vs_reference"]["diff"] < -1
    compared = [rows[m] for m in ("RevNet-38", "Hamiltonian-74", "Midpoint-26")]
    assert [r["p_holm"] for r in compared] == stats.holm([r["vs_reference"]["p"] for r in compared])


def test_baselines_and_the_stepsize_arm():
    assert T.baseline_table(results()) == pytest.approx({"Logistic regression": 84, "MLP": 89})
    effect = T.stepsize_effect(results())
    assert effect is not None and effect["diff"] == pytest.approx(92.0 - 91.0)
    assert T.stepsize_effect({"runs": []}) is None


def test_small_data_pairs_by_seed_and_sits_beside_the_logistic_regression():
    rows = {r["fraction"]: r for r in T.small_data_table(results())}
    one = rows[0.01]
    assert one["seeds"] == [0, 1, 2, 3]  # seed 4 has no partner
    assert one["paired"]["diff"] == pytest.approx(2.0)
    assert one["logistic_regression"] == pytest.approx(75.0)
    assert rows[0.05]["paired"] is None and rows[0.05]["Hamiltonian-74"] is None
    tested = [rows[0.01], rows[0.02]]
    assert [r["p_holm"] for r in tested] == stats.holm([r["paired"]["p"] for r in tested])


def test_the_length_check_on_the_subsets_applies_the_pilot_rule():
    def run(study, model, fraction, acc, updates):
        return {"study": study, "model": model, "seed": 0, "fraction": fraction,
                "val_acc": acc, "updates": updates}  # fmt: skip

    results = {
        "runs": [
            run("small", "ResNet-32", 0.01, 0.780, 1000),
            run("small_length", "ResNet-32", 0.01, 0.782, 2000),  # within 0.3 points
            run("small", "ResNet-32", 0.2, 0.880, 1376),
            run("small_length", "ResNet-32", 0.2, 0.886, 2752),  # 0.6 points more
            run("small", "ResNet-32", 0.02, 0.8, 1000),  # no length check here: no row
        ]
    }
    rows = {r["fraction"]: r for r in T.small_plateau(results)}
    assert set(rows) == {0.01, 0.2}
    assert rows[0.01]["plateau"] and rows[0.01]["updates"] == (1000, 2000)
    assert not rows[0.2]["plateau"] and abs(rows[0.2]["gain"] - 0.006) < 1e-12
