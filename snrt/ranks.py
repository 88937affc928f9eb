"""Ranks, normal scores and Kendall's tau for the accuracy rankers and their benchmark, from
scipy (`scipy.stats.rankdata`, `scipy.special.ndtri`, `scipy.stats.kendalltau`; the `predict`
extra, imported when a function is called: see `snrt.numerics`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .numerics import require_scipy

__all__ = ["kendall_tau", "normal_ppf", "normal_scores", "rank_average"]


def rank_average(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """0-based ranks of `values` (smallest = 0); tied values share the mean of their ranks."""
    scipy = require_scipy()
    v = np.asarray(values, dtype=float).ravel()
    return scipy.stats.rankdata(v, method="average") - 1.0


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b of two equally long sequences (ties handled as in tau-b).

    Returns nan when fewer than two items or when either sequence is constant.
    """
    scipy = require_scipy()
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("kendall_tau got nan values")
    # scipy warns and returns nan for these; say nan without the warning
    if len(x) < 2 or (x == x[0]).all() or (y == y[0]).all():
        return float("nan")
    return float(scipy.stats.kendalltau(x, y, variant="b").statistic)


def normal_ppf(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Inverse of the standard normal CDF for p in (0, 1)."""
    scipy = require_scipy()
    p = np.asarray(p, dtype=float)
    if ((p <= 0) | (p >= 1)).any():
        raise ValueError("normal_ppf needs probabilities strictly between 0 and 1")
    return scipy.special.ndtri(p)


def normal_scores(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Rank-based inverse normal transform: Phi^-1((rank + 0.5) / n), ties share their rank.

    Accuracy ranks are uniform by construction; an additive model of the architecture fits
    their normal scores better than the raw ranks (the sum of many block effects is close to
    Gaussian), and only the order of the predictions matters for Kendall's tau.
    """
    r = rank_average(values)
    return normal_ppf((r + 0.5) / len(r))
