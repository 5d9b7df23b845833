"""Statistics for comparing a metric between groups of models.

Inputs are one value per model (each model counts once); NaN values are dropped. A group
with fewer than two models gets no p-value and no interval (NaN, with a note), never a
p = 1 with a zero-width interval.

- unpaired: difference of the means with a percentile bootstrap interval (each group
  resampled on its own), the two-sided Mann-Whitney U p-value, Cliff's delta;
- paired (matched pairs: the robust and the normal model of one training pair): the
  per-pair differences d_k = a_k - b_k, their mean with a paired bootstrap interval (pairs
  resampled), the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``: exact
  for small samples without ties, zero differences dropped);
- permutation nulls, seeded and bounded: group labels shuffled over models, each model
  kept whole (unpaired), or swapped within pairs (paired: the signs of the d_k flipped).
  All labelings are enumerated when there are at most ``n_permutations`` of them (exact
  test, the observed labeling included), otherwise ``n_permutations`` random ones with
  p = (1 + #{T* >= T}) / (1 + N). T is |mean difference| (two-sided);
- :func:`holm`: Holm's step-down adjustment for multiple comparisons.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import mannwhitneyu, wilcoxon

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95
PERMUTATIONS = 9999
FEWER_THAN_TWO = "fewer than 2 models in a group: no test"
FEWER_THAN_TWO_PAIRS = "fewer than 2 pairs: no test"
_TIE = 1e-12  # relative tolerance under which a permuted statistic counts as equal to the observed one


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
    """Every unpaired between-group statistic of one metric."""
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    difference: float  # mean_a - mean_b
    ci_low: float
    ci_high: float
    p_value: float
    cliffs_delta: float
    note: str = ""


def two_sample(a, b, seed: int = 0) -> TwoSample:
    a, b = _clean(a), _clean(b)
    mean_a = float(a.mean()) if len(a) else math.nan
    mean_b = float(b.mean()) if len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return TwoSample(len(a), len(b), mean_a, mean_b, mean_a - mean_b, math.nan, math.nan, math.nan,
                         cliffs_delta(a, b), FEWER_THAN_TWO)
    lo, hi = bootstrap_ci(a, b, seed=seed)
    return TwoSample(len(a), len(b), mean_a, mean_b, mean_a - mean_b, lo, hi, mann_whitney_p(a, b), cliffs_delta(a, b))


# ---------------------------------------------------------------------------- paired

def wilcoxon_p(differences) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the per-pair differences (scipy; zeros dropped).

    NaN for fewer than 2 differences; 1.0 if every difference is zero (no evidence either way)."""
    d = _clean(differences)
    if len(d) < 2:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, alternative="two-sided").pvalue)


def mean_bootstrap_ci(values, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of one sample (per-pair differences, per-model values),
    resampling its values. Deterministic for a given ``seed``; NaN bounds for fewer than 2 values."""
    d = _clean(values)
    if len(d) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


@dataclass
class Paired:
    """The paired statistics of one metric over matched pairs."""
    n_pairs: int
    difference: float  # mean of a_k - b_k
    ci_low: float
    ci_high: float
    p_value: float
    note: str = ""


def paired(a, b, seed: int = 0) -> Paired:
    """Statistics of ``a[k] - b[k]`` over the pairs where both values are defined."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    mean = float(d.mean()) if len(d) else math.nan
    if len(d) < 2:
        return Paired(len(d), mean, math.nan, math.nan, math.nan, FEWER_THAN_TWO_PAIRS)
    lo, hi = mean_bootstrap_ci(d, seed=seed)
    return Paired(len(d), mean, lo, hi, wilcoxon_p(d))


# ---------------------------------------------------------------------------- permutation nulls

@dataclass
class Permutation:
    """A permutation test: p-value, the null's median statistic, how many labelings, exact or sampled."""
    p_value: float
    null_median: float
    n_permutations: int
    exact: bool

    @classmethod
    def none(cls) -> "Permutation":
        return cls(math.nan, math.nan, 0, False)


def labelings(n_a: int, n_b: int, n_permutations: int = PERMUTATIONS, seed: int = 0) -> tuple[np.ndarray, bool]:
    """Boolean (K, n_a + n_b) matrix, True = in group A: every split when there are at most
    ``n_permutations`` (exact), else ``n_permutations`` random label shuffles."""
    n = n_a + n_b
    if math.comb(n, n_a) <= n_permutations:
        out = np.zeros((math.comb(n, n_a), n), dtype=bool)
        for k, chosen in enumerate(itertools.combinations(range(n), n_a)):
            out[k, list(chosen)] = True
        return out, True
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n) < n_a, (n_permutations, 1)), axis=1), False


def sign_flips(n_pairs: int, n_permutations: int = PERMUTATIONS, seed: int = 0) -> tuple[np.ndarray, bool]:
    """(K, n_pairs) matrix of +-1 (labels swapped within a pair): all 2^n when at most
    ``n_permutations``, else random ones."""
    if 2 ** n_pairs <= n_permutations:
        grid = np.array(list(itertools.product((1.0, -1.0), repeat=n_pairs)))
        return grid.reshape(-1, n_pairs), True
    rng = np.random.default_rng(seed)
    return rng.choice((1.0, -1.0), size=(n_permutations, n_pairs)), False


def permutation_p(observed: float, null: np.ndarray, exact: bool) -> float:
    """Share of the null at least as large as ``observed`` (ties within 1e-12 relative count)."""
    hits = int(np.count_nonzero(null >= observed - _TIE * abs(observed)))
    return hits / len(null) if exact else (1 + hits) / (1 + len(null))


def permutation_test(a, b, n_permutations: int = PERMUTATIONS, seed: int = 0) -> Permutation:
    """Unpaired: T = |mean(A) - mean(B)| against label shuffles over the models."""
    a, b = _clean(a), _clean(b)
    if len(a) < 2 or len(b) < 2:
        return Permutation.none()
    x = np.concatenate([a, b])
    masks, exact = labelings(len(a), len(b), n_permutations, seed)
    null = np.abs(masks @ x / len(a) - (~masks) @ x / len(b))
    observed = abs(a.mean() - b.mean())
    return Permutation(permutation_p(observed, null, exact), float(np.median(null)), len(null), exact)


def paired_permutation_test(a, b, n_permutations: int = PERMUTATIONS, seed: int = 0) -> Permutation:
    """Paired: T = |mean(a_k - b_k)| against swaps of the labels within pairs (sign flips)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if len(d) < 2:
        return Permutation.none()
    signs, exact = sign_flips(len(d), n_permutations, seed)
    null = np.abs(signs @ d / len(d))
    return Permutation(permutation_p(abs(d.mean()), null, exact), float(np.median(null)), len(null), exact)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error); NaN entries stay NaN and are not counted.

    Sorted p_(1) <= ... <= p_(m): adjusted p_(j) = max_{i <= j} min(1, (m - i + 1) p_(i))."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    if len(q) == 0:
        return out
    order = np.argsort(q, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(q) - np.arange(len(q))) * q[order]))
    result = np.empty(len(q))
    result[order] = adjusted
    out[ok] = result
    return out
