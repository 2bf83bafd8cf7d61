"""Statistics for a handful of seeds: t intervals, Welch's test, equivalence (TOST), Holm, pairs.

With three to five runs per arm the normal approximation understates every
interval, so everything here uses Student's t: :func:`interval` for one arm,
:func:`welch` for two independent arms (Welch-Satterthwaite degrees of
freedom), :func:`paired` for two arms that share a seed's data, :func:`tost`
for an equivalence claim ("A matches B within a margin": Schuirmann's two
one-sided tests), and :func:`holm` for several comparisons at once (Holm 1979).
Values are whatever unit the caller uses (the book uses accuracy points).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats as _t

__all__ = ["interval", "welch", "paired", "tost", "holm", "detectable_difference"]


def _check(values: Sequence[float], who: str) -> None:
    if len(values) < 2:
        raise ValueError(f"stats.{who}: need at least two values per arm, got {len(values)}")


def interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample SD, standard error and the t interval of the mean."""
    _check(values, "interval")
    n = len(values)
    mean, sd = statistics.mean(values), statistics.stdev(values)
    sem = sd / math.sqrt(n)
    q = float(_t.t.ppf(0.5 + confidence / 2, n - 1))
    return {
        "mean": mean,
        "sd": sd,
        "sem": sem,
        "n": n,
        "low": mean - q * sem,
        "high": mean + q * sem,
    }


def detectable_difference(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided t test at ``alpha`` detects with ``power``.

    ``(t_{1 - alpha/2, df} + t_{power, df}) * se``.
    """
    return float((_t.t.ppf(1 - alpha / 2, df) + _t.t.ppf(power, df)) * se)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """mean(a) - mean(b): Welch's standard error and degrees of freedom, the t interval, p, and
    the minimal detectable difference (``mdd``, power 0.8)."""
    _check(a, "welch")
    _check(b, "welch")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.mean(a) - statistics.mean(b)
    se = math.sqrt(va + vb)
    if se == 0:
        df = float(len(a) + len(b) - 2)
    else:
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    q = float(_t.t.ppf(0.5 + confidence / 2, df))
    p = float(2 * _t.t.sf(abs(diff) / se, df)) if se > 0 else (1.0 if diff == 0 else 0.0)
    return {
        "diff": diff,
        "se": se,
        "df": df,
        "low": diff - q * se,
        "high": diff + q * se,
        "p": p,
        "mdd": detectable_difference(se, df, 1 - confidence),
    }


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """mean(a - b) over pairs (a[i], b[i] share seed i's data) with its t interval and p."""
    if len(a) != len(b):
        raise ValueError(f"stats.paired: {len(a)} and {len(b)} values do not pair up")
    d = [x - y for x, y in zip(a, b, strict=True)]
    s = interval(d, confidence)
    p = float(2 * _t.t.sf(abs(s["mean"]) / s["sem"], len(d) - 1)) if s["sem"] > 0 else 0.0
    return {
        "diff": s["mean"],
        "se": s["sem"],
        "df": len(d) - 1,
        "low": s["low"],
        "high": s["high"],
        "p": p,
    }


def tost(
    a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05
) -> dict[str, float | bool]:
    """Two one-sided Welch tests of ``|mean(a) - mean(b)| < margin`` (equivalence at ``alpha``).

    The same as the (1 - 2 alpha) t interval of the difference lying inside
    (-margin, margin); ``p`` is the larger one-sided p value.
    """
    w = welch(a, b, 1 - 2 * alpha)
    if w["se"] == 0:
        p = 0.0 if abs(w["diff"]) < margin else 1.0
    else:
        p_low = float(_t.t.sf((w["diff"] + margin) / w["se"], w["df"]))
        p_high = float(_t.t.cdf((w["diff"] - margin) / w["se"], w["df"]))
        p = max(p_low, p_high)
    return {
        "diff": w["diff"],
        "low": w["low"],
        "high": w["high"],
        "margin": margin,
        "p": p,
        "equivalent": p < alpha,
    }


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values, in the order given (reject where adjusted p < alpha)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
