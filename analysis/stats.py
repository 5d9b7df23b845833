"""Two-sample statistics for comparing a metric between groups of models.

Inputs are one value per model (each model counts once). NaN values are dropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import mannwhitneyu

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95


def _clean(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[~np.isnan(x)]


def mann_whitney_p(a, b) -> float:
    """Two-sided Mann-Whitney U p-value (scipy, exact for small samples without ties); NaN if a group is empty."""
    a, b = _clean(a), _clean(b)
    if len(a) == 0 or len(b) == 0:
        return math.nan
    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0  # all values equal: no evidence of a difference (scipy would divide by zero)
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def cliffs_delta(a, b) -> float:
    """Cliff's delta: ``(#{a_i > b_j} - #{a_i < b_j}) / (n_a n_b)``, in [-1, 1]; NaN if a group is empty."""
    a, b = _clean(a), _clean(b)
    if len(a) == 0 or len(b) == 0:
        return math.nan
    b = np.sort(b)
    greater = np.searchsorted(b, a, side="left").sum()  # b_j < a_i
    less = (len(b) - np.searchsorted(b, a, side="right")).sum()  # b_j > a_i
    return float((greater - less) / (len(a) * len(b)))


def bootstrap_ci(a, b, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a) - mean(b)``, resampling each group on its own.

    Deterministic for a given ``seed``. NaN bounds if a group is empty.
    """
    a, b = _clean(a), _clean(b)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(0, len(a), size=(resamples, len(a)))].mean(axis=1)
    means_b = b[rng.integers(0, len(b), size=(resamples, len(b)))].mean(axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means_a - means_b, [tail, 1 - tail])
    return float(lo), float(hi)


@dataclass
class TwoSample:
    """Every between-group statistic of one metric."""
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    difference: float  # mean_a - mean_b
    ci_low: float
    ci_high: float
    p_value: float
    cliffs_delta: float


def two_sample(a, b, seed: int = 0) -> TwoSample:
    a, b = _clean(a), _clean(b)
    mean_a = float(a.mean()) if len(a) else math.nan
    mean_b = float(b.mean()) if len(b) else math.nan
    lo, hi = bootstrap_ci(a, b, seed=seed)
    return TwoSample(len(a), len(b), mean_a, mean_b, mean_a - mean_b, lo, hi, mann_whitney_p(a, b), cliffs_delta(a, b))
