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

The p-values are scipy's. Where scipy uses the normal approximation (Mann-Whitney with both
groups over 8 models or with ties, Wilcoxon over 50 pairs) or its exact null distribution
(Mann-Whitney with a group of at most 8 and no ties, Wilcoxon up to 50 pairs without ties or
zeros) the p-value is computed here with scipy's formulas and rules, so that a comparison does
not import scipy.stats (about 0.5 s of CPU); only Wilcoxon with ties or zero differences among
at most 50 pairs calls scipy (its permutation test). tests/test_stats.py holds them to 1e-12.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

from filterdb.analysis import kept_draws
from filterdb.analysis.subset_sums import PackedMasks, blocked_product

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
    """Two-sided Mann-Whitney U p-value, as ``scipy.stats.mannwhitneyu`` gives it (exact for small
    samples without ties (:func:`mann_whitney_exact_p`), else the normal approximation with tie and
    continuity corrections); NaN if a group is empty."""
    a, b = _clean(a), _clean(b)
    if len(a) == 0 or len(b) == 0:
        return math.nan
    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0  # all values equal: no evidence of a difference (scipy would divide by zero)
    ranks, ties = average_ranks(np.concatenate([a, b]))
    n1, n2 = len(a), len(b)
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    u = max(u1, n1 * n2 - u1)
    if min(n1, n2) <= 8 and (ties == 1).all():  # where scipy uses its exact distribution
        return mann_whitney_exact_p(int(round(u)), n1, n2)
    n = n1 + n2
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - (ties ** 3 - ties).sum() / (n * (n - 1))))
    return min(1.0, 2 * _normal_sf((u - n1 * n2 / 2 - 0.5) / sigma))


def mann_whitney_exact_p(u: int, n1: int, n2: int) -> float:
    """Two-sided exact p-value of U = max(U1, U2) (no ties): ``min(1, 2 P(U' >= u))`` under the null,
    as scipy's exact method gives it. By symmetry P(U' >= u) = P(U' <= n1 n2 - u); the number of
    orderings with U' = k is the coefficient of q^k in the Gaussian binomial
    [n1 + n2 choose n1]_q = prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i) (m, n = the smaller and larger
    size), counted exactly in integers up to the degree needed.

    >>> mann_whitney_exact_p(4, 2, 2)  # U' over the 6 orderings: 0, 1, 2, 2, 3, 4
    0.3333333333333333
    """
    m, n = min(n1, n2), max(n1, n2)
    upto = m * n - u
    if upto < 0:
        return 0.0
    counts = np.zeros(upto + 1, dtype=object)
    counts[0] = 1
    for i in range(1, m + 1):
        j = n + i
        if j <= upto:
            counts[j:] = counts[j:] - counts[:-j]  # times (1 - q^j)
        for r in range(i):  # divided by (1 - q^i): each residue class mod i summed up
            counts[r::i] = np.cumsum(counts[r::i])
    return min(1.0, 2 * int(counts.sum()) / math.comb(n1 + n2, m))


def wilcoxon_exact_p(r_plus: int, n: int) -> float:
    """Two-sided exact p-value of the signed-rank sum R+ of n differences (no ties, no zeros):
    ``min(1, 2 min(P(R >= r_plus), P(R <= r_plus)))`` under the null, as scipy's exact method gives
    it; the number of sign patterns with R = k counts the subsets of {1..n} that sum to k.

    >>> wilcoxon_exact_p(6, 3)  # all three differences positive: 1 pattern of 8 on each side
    0.25
    """
    counts = np.zeros(n * (n + 1) // 2 + 1, dtype=np.int64)  # at most C(50, 25) < 2^63
    counts[0] = 1
    for i in range(1, n + 1):
        counts[i:] = counts[i:] + counts[:-i]
    tail = min(int(counts[r_plus:].sum()), int(counts[:r_plus + 1].sum()))
    return min(1.0, 2 * tail / 2 ** n)


def average_ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks 1..n of ``x`` (ties get the mean of their ranks) and the size of each group of ties."""
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return ((upper - (counts - 1) / 2)[inverse]).astype(np.float64), counts.astype(np.float64)


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z (scipy.special.ndtr(-z))."""
    return 0.5 * math.erfc(z / math.sqrt(2))


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
    lo, hi = bootstrap_intervals(a[:, None], b[:, None], confidence, resamples, seed)[0]
    return float(lo), float(hi)


def bootstrap_intervals(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """:func:`bootstrap_ci` of each column of ``a`` (n_a, m) and ``b`` (n_b, m), no NaN: (m, 2) bounds.
    The columns share the resamples (the same models drawn), as separate calls would."""
    counts_a, counts_b = resample_counts((len(a), len(b)), resamples, seed)
    tail = (1 - confidence) / 2
    return np.quantile(row_means(counts_a, a) - row_means(counts_b, b), [tail, 1 - tail], axis=0).T


@functools.lru_cache(maxsize=4)
def resample_counts(sizes: tuple[int, ...], resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    """Bootstrap resamples as counts: per size n (drawn in turn from one generator seeded with
    ``seed``, n indices per resample), a read-only (resamples, n) matrix of how often each item was
    drawn: uint16, or uint8 where kept and every count fits. The same for every metric of a
    comparison, so drawn once (cached); kept on disk (:mod:`.kept_draws`) once large, as the
    labelings are."""
    if resamples * sum(sizes) < KEEP_DRAWS:
        out = _drawn_counts(sizes, resamples, seed)
    else:
        def draw() -> dict[str, np.ndarray]:
            counts = _drawn_counts(sizes, resamples, seed)
            small = all(c.max(initial=0) <= np.iinfo(np.uint8).max for c in counts)  # as good as certain
            return {f"counts{i}": c.astype(np.uint8) if small else c for i, c in enumerate(counts)}

        def valid(arrays: dict[str, np.ndarray]) -> bool:
            return len(arrays) == len(sizes) and all(
                arrays[f"counts{i}"].shape == (resamples, n) and (arrays[f"counts{i}"].sum(axis=1) == n).all()
                for i, n in enumerate(sizes))

        arrays = kept_draws.kept("bootstrap", f"{'-'.join(map(str, sizes))}-{resamples}-seed{seed}", draw, valid)
        out = tuple(arrays[f"counts{i}"] for i in range(len(sizes)))
    for counts in out:
        counts.flags.writeable = False
    return out


def _drawn_counts(sizes: tuple[int, ...], resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        if n > np.iinfo(np.uint16).max:
            raise ValueError(f"bootstrap of {n} values: at most 65535 supported")
        counts = np.empty((resamples, n), np.uint16)
        block = max(1, (1 << 17) // n)  # rows drawn and counted at once: their bins stay in cache
        offsets = (np.arange(block) * n)[:, None]
        for lo in range(0, resamples, block):
            k = min(block, resamples - lo)  # numpy draws the same stream in blocks of rows as whole (tests pin it)
            drawn = rng.integers(0, n, size=(k, n)) + offsets[:k]
            counts[lo:lo + k] = np.bincount(drawn.ravel(), minlength=k * n).reshape(k, n)
        out.append(counts)
    return tuple(out)


def row_means(counts: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``counts @ x / len(x)``: the mean of each resample (a row of counts) of the values ``x`` (n or (n, m))."""
    return blocked_product(counts, x) / len(x)


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


def two_sample_columns(a: np.ndarray, b: np.ndarray, seed: int = 0) -> list[TwoSample]:
    """:func:`two_sample` of each column of ``a`` (n_a, m) and ``b`` (n_b, m): the same results, with
    the bootstrap of the columns without NaN in one pass (every metric of a comparison at once)."""
    whole = _whole_columns(a, b)
    bounds = iter(bootstrap_intervals(a[:, whole], b[:, whole], seed=seed) if whole.any() else [])
    out = []
    for j in range(a.shape[1]):
        x, y = a[:, j], b[:, j]
        if not whole[j]:
            out.append(two_sample(x, y, seed))
            continue
        lo, hi = next(bounds)
        out.append(TwoSample(len(x), len(y), float(x.mean()), float(y.mean()), float(x.mean()) - float(y.mean()),
                             float(lo), float(hi), mann_whitney_p(x, y), cliffs_delta(x, y)))
    return out


def _whole_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Columns without NaN in either group, where both groups have at least 2 values (the batched path)."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros(a.shape[1], bool)
    return ~(np.isnan(a).any(axis=0) | np.isnan(b).any(axis=0))


# ---------------------------------------------------------------------------- paired

def wilcoxon_p(differences) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the per-pair differences, as ``scipy.stats.wilcoxon``
    gives it (zeros dropped; up to 50 differences exact (:func:`wilcoxon_exact_p`) or, with ties or
    zeros, scipy's permutation test or approximation; else the normal approximation with the tie
    correction, no continuity correction).

    NaN for fewer than 2 differences; 1.0 if every difference is zero (no evidence either way)."""
    d = _clean(differences)
    if len(d) < 2:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    nonzero = d[d != 0]
    ranks, ties = average_ranks(np.abs(nonzero))
    r_plus = ranks[nonzero > 0].sum()
    if len(d) <= 50:
        if len(nonzero) == len(d) and (ties == 1).all():  # scipy's exact distribution
            return wilcoxon_exact_p(int(round(r_plus)), len(d))
        # ties or zeros: scipy's permutation test (up to 13) or approximation; imported only here
        from scipy.stats import wilcoxon
        return float(wilcoxon(d, alternative="two-sided").pvalue)
    d = nonzero
    n = len(d)
    se = math.sqrt((n * (n + 1) * (2 * n + 1) - (ties ** 3 - ties).sum() / 2) / 24)
    return min(1.0, 2 * _normal_sf(abs(r_plus - n * (n + 1) / 4) / se))


def mean_bootstrap_ci(values, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of one sample (per-pair differences, per-model values),
    resampling its values. Deterministic for a given ``seed``; NaN bounds for fewer than 2 values."""
    d = _clean(values)
    if len(d) < 2:
        return math.nan, math.nan
    (counts,) = resample_counts((len(d),), resamples, seed)
    means = row_means(counts, d)
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
    def none(cls) -> Permutation:
        return cls(math.nan, math.nan, 0, False)


@functools.lru_cache(maxsize=4)
def labelings(n_a: int, n_b: int, n_permutations: int = PERMUTATIONS, seed: int = 0) -> tuple[np.ndarray, bool]:
    """Boolean (K, n_a + n_b) matrix, True = in group A: every split when there are at most
    ``n_permutations`` (exact), else ``n_permutations`` random label shuffles. Read-only and
    cached, as :func:`packed_labelings` (the same rows, what the comparison's nulls take)."""
    packed, exact = packed_labelings(n_a, n_b, n_permutations, seed)
    out = packed[:]
    out.flags.writeable = False
    return out, exact


@functools.lru_cache(maxsize=4)
def packed_labelings(n_a: int, n_b: int, n_permutations: int = PERMUTATIONS, seed: int = 0
                     ) -> tuple[PackedMasks, bool]:
    """:func:`labelings` bit-packed (an eighth of the memory, unpacked a block at a time by the
    products that take them). Cached: every metric and the divergence of a comparison share them."""
    n = n_a + n_b
    if math.comb(n, n_a) <= n_permutations:
        out = np.zeros((math.comb(n, n_a), n), dtype=bool)
        for k, chosen in enumerate(itertools.combinations(range(n), n_a)):
            out[k, list(chosen)] = True
        return PackedMasks(np.packbits(out, axis=1), n), True
    return PackedMasks(_packed_kept_labelings(n_a, n_b, n_permutations, seed), n), False


KEEP_DRAWS = 1 << 21  # draws x models from which seeded draws are kept on disk (drawing costs more)


def _drawn_labelings(n_a: int, n_b: int, n_permutations: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n_a + n_b) < n_a, (n_permutations, 1)), axis=1)


def _kept_labelings(n_a: int, n_b: int, n_permutations: int, seed: int) -> np.ndarray:
    """:func:`_drawn_labelings`, kept bit-packed on disk (:mod:`.kept_draws`) once large; a kept file
    whose rows are not labelings of these sizes is drawn again."""
    return PackedMasks(_packed_kept_labelings(n_a, n_b, n_permutations, seed), n_a + n_b)[:]


def _packed_kept_labelings(n_a: int, n_b: int, n_permutations: int, seed: int) -> np.ndarray:
    n = n_a + n_b
    if n_permutations * n < KEEP_DRAWS:
        return np.packbits(_drawn_labelings(n_a, n_b, n_permutations, seed), axis=1)

    def draw() -> dict[str, np.ndarray]:
        return {"packed": np.packbits(_drawn_labelings(n_a, n_b, n_permutations, seed), axis=1)}

    def valid(arrays: dict[str, np.ndarray]) -> bool:
        packed = arrays["packed"]
        if packed.shape != (n_permutations, (n + 7) // 8) or packed.dtype != np.uint8:
            return False
        padding = (1 << (-n % 8)) - 1  # the last byte's bits past the n-th model
        return bool((packed[:, -1] & padding == 0).all() and (np.bitwise_count(packed).sum(axis=1) == n_a).all())

    return kept_draws.kept("labelings", f"{n_a}-{n_b}-{n_permutations}-seed{seed}", draw, valid)["packed"]


@functools.lru_cache(maxsize=4)
def sign_flips(n_pairs: int, n_permutations: int = PERMUTATIONS, seed: int = 0) -> tuple[np.ndarray, bool]:
    """(K, n_pairs) matrix of +-1 (labels swapped within a pair): all 2^n when at most
    ``n_permutations``, else random ones. Read-only and cached, as :func:`labelings`."""
    if 2 ** n_pairs <= n_permutations:
        out, exact = np.array(list(itertools.product((1.0, -1.0), repeat=n_pairs))).reshape(-1, n_pairs), True
    else:
        out, exact = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_permutations, n_pairs)), False
    out.flags.writeable = False
    return out, exact


def permutation_p(observed: float, null: np.ndarray, exact: bool) -> float:
    """Share of the null at least as large as ``observed`` (ties within 1e-12 relative count)."""
    hits = int(np.count_nonzero(null >= observed - _TIE * abs(observed)))
    return hits / len(null) if exact else (1 + hits) / (1 + len(null))


def permutation_test(a, b, n_permutations: int = PERMUTATIONS, seed: int = 0) -> Permutation:
    """Unpaired: T = |mean(A) - mean(B)| against label shuffles over the models."""
    a, b = _clean(a), _clean(b)
    if len(a) < 2 or len(b) < 2:
        return Permutation.none()
    return _permutation_tests(a[:, None], b[:, None], n_permutations, seed)[0]


def permutation_test_columns(a: np.ndarray, b: np.ndarray, n_permutations: int = PERMUTATIONS, seed: int = 0
                             ) -> list[Permutation]:
    """:func:`permutation_test` of each column of ``a`` (n_a, m) and ``b`` (n_b, m): the same results,
    the columns without NaN in one pass over the labelings."""
    whole = _whole_columns(a, b)
    batched = iter(_permutation_tests(a[:, whole], b[:, whole], n_permutations, seed) if whole.any() else [])
    return [next(batched) if whole[j] else permutation_test(a[:, j], b[:, j], n_permutations, seed)
            for j in range(a.shape[1])]


def _permutation_tests(a: np.ndarray, b: np.ndarray, n_permutations: int, seed: int) -> list[Permutation]:
    x = np.concatenate([a, b])
    masks, exact = packed_labelings(len(a), len(b), n_permutations, seed)
    in_a = blocked_product(masks, x)
    null = np.abs(in_a / len(a) - (x.sum(axis=0) - in_a) / len(b))
    observed = np.abs(a.mean(axis=0) - b.mean(axis=0))
    return [Permutation(permutation_p(observed[j], null[:, j], exact), float(np.median(null[:, j])), len(null), exact)
            for j in range(a.shape[1])]


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
