"""revlib.harness.stats against scipy's own tests and hand-computed values."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sp

from revlib.harness import stats

A = [91.2, 90.6, 91.0, 90.9]
B = [90.1, 90.8, 89.9]


def test_interval_is_the_t_interval():
    s = stats.interval([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == 1.0 and s["n"] == 3
    half = sp.t.ppf(0.975, 2) / math.sqrt(3)  # 4.303 / sqrt(3): wider than the normal 1.96
    assert s["high"] - 2.0 == pytest.approx(half) and half > 2.4
    with pytest.raises(ValueError, match="stats.interval: need at least two"):
        stats.interval([1.0])


def test_welch_agrees_with_scipy_and_its_interval_holds_the_difference():
    w = stats.welch(A, B)
    ref = sp.ttest_ind(A, B, equal_var=False)
    assert w["p"] == pytest.approx(ref.pvalue) and w["df"] == pytest.approx(ref.df)
    assert w["low"] < w["diff"] < w["high"]
    assert w["mdd"] == pytest.approx((sp.t.ppf(0.975, w["df"]) + sp.t.ppf(0.8, w["df"])) * w["se"])


def test_paired_agrees_with_scipy():
    a, b = [1.0, 2.5, 3.0, 4.2], [0.8, 2.0, 3.1, 3.6]
    p = stats.paired(a, b)
    assert p["p"] == pytest.approx(sp.ttest_rel(a, b).pvalue)
    with pytest.raises(ValueError, match="do not pair up"):
        stats.paired(a, b[:3])


def test_tost_needs_the_whole_interval_inside_the_margin():
    close = stats.tost([90.0, 90.1, 89.9, 90.05], [90.02, 89.95, 90.08, 90.0], margin=0.5)
    assert close["equivalent"] and close["p"] < 0.05
    # the same means with a wide spread: not shown equivalent (the control)
    wide = stats.tost([89.0, 91.0, 90.5, 89.5], [91.0, 89.0, 89.6, 90.4], margin=0.5)
    assert not wide["equivalent"]
    # equivalent exactly when the 90 % interval lies inside the margin
    for t in (close, wide):
        assert t["equivalent"] == (-0.5 < t["low"] and t["high"] < 0.5)


def test_holm_steps_down():
    assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
