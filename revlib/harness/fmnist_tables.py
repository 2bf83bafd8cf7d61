"""Chapter 7's tables from the grid's results file: intervals, comparisons and baselines.

Every accuracy is in points (percent of the 10,000 test images). The analysis
was fixed before the main runs could be compared (when one main run had
finished), so that no choice below was made after seeing a difference:

* each network: its mean over seeds with the t interval (:func:`revlib.harness.stats.interval`);
* each network against ResNet-32: Welch's difference with its interval, p
  value and minimal detectable difference, Holm's correction across the four
  comparisons, and an equivalence test (two one-sided tests) with the margin
  :data:`EQUIVALENCE_MARGIN`; "matches" is said only where that test passes;
* the step-size arm against Hamiltonian-74 at the papers' learning rate (Welch);
* small data: Hamiltonian-74 against ResNet-32 on the same subsets, paired by
  seed (:func:`revlib.harness.stats.paired`), Holm across the fractions,
  beside the logistic regression fitted on the same subsets; the one contrast
  named before any small-data run had finished is :data:`SMALL_CONTRAST`;
* the subsets' length check: the pilot's rule on seed 0 (:func:`small_plateau`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from . import stats
from .baselines import BASELINES
from .fmnist_grid import FRACTIONS, NETWORKS, PLATEAU_TOLERANCE
from .grid import select

__all__ = [
    "EQUIVALENCE_MARGIN",
    "REFERENCE",
    "SMALL_CONTRAST",
    "accuracies",
    "main_table",
    "baseline_table",
    "stepsize_effect",
    "small_data_table",
    "small_plateau",
]

EQUIVALENCE_MARGIN = 0.5
"""Points of test accuracy within which two networks count as equivalent (stated in advance)."""
REFERENCE = "ResNet-32"
SMALL_CONTRAST = 0.01
"""The training fraction of the small-data contrast named in advance: Hamiltonian-74 minus
ResNet-32 on 1 % of the training split, where Chang et al.'s claim would show most."""

Row = dict[str, Any]


def accuracies(
    results: dict[str, Any],
    study: str,
    model: str,
    fraction: float = 1.0,
    keep: Callable[[Row], bool] = lambda run: True,
) -> dict[int, float]:
    """Test accuracy in points, by seed, of the finished runs of ``study`` for ``model``."""
    return {
        run["seed"]: 100 * run["test_acc"]
        for run in results["runs"]
        if run["study"] == study
        and run["model"] == model
        and run["fraction"] == fraction
        and "test_acc" in run
        and keep(run)
    }


def main_table(results: dict[str, Any], margin: float = EQUIVALENCE_MARGIN) -> list[Row]:
    """One row per network of the main study: its interval, and its comparison to ResNet-32
    (``None`` for ResNet-32 itself, or where either arm has fewer than two seeds)."""
    reference = list(accuracies(results, "main", REFERENCE).values())
    rows: list[Row] = []
    for name in NETWORKS:
        acc = list(accuracies(results, "main", name).values())
        row: Row = {"model": name, "n": len(acc), "accuracies": acc}
        row["interval"] = stats.interval(acc) if len(acc) >= 2 else None
        comparable = name != REFERENCE and len(acc) >= 2 and len(reference) >= 2
        row["vs_reference"] = stats.welch(acc, reference) if comparable else None
        row["equivalence"] = stats.tost(acc, reference, margin) if comparable else None
        rows.append(row)
    compared = [r for r in rows if r["vs_reference"] is not None]
    for r, p in zip(compared, stats.holm([r["vs_reference"]["p"] for r in compared]), strict=True):
        r["p_holm"] = p
    return rows


def baseline_table(results: dict[str, Any], fraction: float = 1.0) -> dict[str, float]:
    """The baselines' test accuracy in points on the same split (seed 0), by name."""
    out = {}
    for name in BASELINES:
        acc = accuracies(results, "baseline", name, fraction)
        if 0 in acc:
            out[name] = acc[0]
    return out


def stepsize_effect(results: dict[str, Any]) -> dict[str, float] | None:
    """Hamiltonian-74 with its blocks' learning rate times 1/h against the papers' rate
    (Welch), or ``None`` before both arms have two seeds."""
    scaled = list(accuracies(results, "stepsize", "Hamiltonian-74").values())
    plain = list(accuracies(results, "main", "Hamiltonian-74").values())
    if len(scaled) < 2 or len(plain) < 2:
        return None
    return stats.welch(scaled, plain)


def small_data_table(
    results: dict[str, Any], model: str = "Hamiltonian-74", reference: str = REFERENCE
) -> list[Row]:
    """One row per training fraction: both networks' means, their paired difference over the
    seeds both finished (each seed one subset, shared), Holm across fractions, and the logistic
    regression's mean on the same subsets."""
    rows: list[Row] = []
    for f in FRACTIONS:
        a, b = accuracies(results, "small", model, f), accuracies(results, "small", reference, f)
        seeds = sorted(set(a) & set(b))
        logreg = accuracies(results, "baseline", BASELINES[0], f)
        row: Row = {
            "fraction": f,
            "seeds": seeds,
            model: statistics.mean(a.values()) if a else None,
            reference: statistics.mean(b.values()) if b else None,
            "logistic_regression": statistics.mean(logreg.values()) if logreg else None,
        }
        row["paired"] = (
            stats.paired([a[s] for s in seeds], [b[s] for s in seeds]) if len(seeds) >= 2 else None
        )
        rows.append(row)
    tested = [r for r in rows if r["paired"] is not None]
    for r, p in zip(tested, stats.holm([r["paired"]["p"] for r in tested]), strict=True):
        r["p_holm"] = p
    return rows


def small_plateau(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The pilot's rule on the subsets: for each ``small_length`` run, the validation accuracy of
    seed 0's small-data run (``once``) and of the same network on the same subset with twice the
    updates (``twice``), and whether they are within
    :data:`~revlib.harness.fmnist_grid.PLATEAU_TOLERANCE`."""
    rows = []
    for r in select(results, study="small_length"):
        where = {k: r[k] for k in ("model", "seed", "fraction")}
        (once,) = select(results, study="small", **where)
        gain = r["val_acc"] - once["val_acc"]
        rows.append(
            {
                "model": r["model"],
                "fraction": r["fraction"],
                "updates": (once["updates"], r["updates"]),
                "once": once["val_acc"],
                "twice": r["val_acc"],
                "gain": gain,
                "plateau": round(abs(gain), 9) <= PLATEAU_TOLERANCE,
            }
        )
    return rows
