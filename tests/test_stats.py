"""Between-group statistics: hand-computed values."""
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import kstest

from filterdb.analysis.stats import (
    FEWER_THAN_TWO,
    Permutation,
    bootstrap_ci,
    cliffs_delta,
    holm,
    mann_whitney_p,
    paired,
    paired_permutation_test,
    permutation_test,
    two_sample,
    wilcoxon_p,
)


def test_cliffs_delta_by_hand():
    assert cliffs_delta([3, 4], [1, 2, 3]) == pytest.approx(5 / 6)  # 5 pairs greater, 1 tie, 0 less
    assert cliffs_delta([1, 2, 3], [2, 2]) == 0.0
    assert cliffs_delta([1, 2], [5, 6]) == -1.0
    assert math.isnan(cliffs_delta([], [1.0]))


def test_mann_whitney_exact_p_value():
    # 3 vs 3 fully separated: 2 of the C(6, 3) = 20 orderings are as extreme (two-sided)
    assert mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert mann_whitney_p([1, 1], [1, 1, 1]) == 1.0
    assert math.isnan(mann_whitney_p([np.nan], [1.0]))


def test_bootstrap_is_seeded_and_brackets_the_difference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.1, 20), rng.normal(0.0, 0.1, 25)
    lo, hi = bootstrap_ci(a, b, seed=3)
    assert (lo, hi) == bootstrap_ci(a, b, seed=3)
    assert lo < a.mean() - b.mean() < hi and 0.8 < lo and hi < 1.2
    assert bootstrap_ci([1, 1, 1], [0, 0]) == (1.0, 1.0)


def test_two_sample_drops_nan_and_counts_models():
    s = two_sample([1.0, np.nan, 3.0], [0.0, 1.0])
    assert (s.n_a, s.n_b, s.mean_a, s.mean_b, s.difference) == (2, 2, 2.0, 0.5, 1.5)
    assert s.cliffs_delta == pytest.approx(0.75)  # (1 vs 0: >, 1 vs 1: =, 3 > both) -> 3/4


def test_a_group_of_one_model_gets_no_p_value_and_no_interval():
    s = two_sample([1.0], [0.0, 2.0, 3.0])
    assert math.isnan(s.p_value) and math.isnan(s.ci_low) and math.isnan(s.ci_high)
    assert s.note == FEWER_THAN_TWO and s.difference == pytest.approx(1 - 5 / 3)
    assert permutation_test([1.0], [0.0, 2.0]) == Permutation.none()
    assert math.isnan(paired([1.0], [0.0]).p_value)


def test_wilcoxon_signed_rank_by_hand():
    # d = 2, -1, 3, 4, 5: ranks of |d| are 2, 1, 3, 4, 5; W- = 1. Of the 2^5 = 32 equally likely
    # sign patterns, W- <= 1 for 2 ({} and {rank 1}): two-sided p = 2 * 2/32 = 0.125
    assert wilcoxon_p([2, -1, 3, 4, 5]) == pytest.approx(0.125, abs=1e-12)
    assert wilcoxon_p([1, 2, 3]) == pytest.approx(0.25, abs=1e-12)  # 3 pairs, all one sign: 2/8
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0 and math.isnan(wilcoxon_p([1.0]))
    p = paired([3.0, 5.0, 4.0, 6.0, 7.0], [1.0, 6.0, 1.0, 2.0, 2.0])  # the same differences
    assert (p.n_pairs, p.difference, p.p_value) == (5, 2.6, pytest.approx(0.125, abs=1e-12))
    assert p.ci_low < 2.6 < p.ci_high


def test_paired_permutation_is_exact_over_sign_flips():
    # 3 pairs, all differences positive: 2 of the 8 sign patterns give |mean d| as large
    result = paired_permutation_test([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
    assert (result.p_value, result.n_permutations, result.exact) == (0.25, 8, True)


def test_holm_by_hand():
    adjusted = holm([0.01, 0.04, 0.03, np.nan])
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    np.testing.assert_allclose(adjusted[:3], [0.03, 0.06, 0.06], rtol=1e-12)
    assert math.isnan(adjusted[3])


def test_permutation_p_of_groups_from_the_same_models_is_roughly_uniform():
    models = np.random.default_rng(0).normal(size=20)
    p_values = []
    for seed in range(30):
        split = np.random.default_rng(100 + seed).permutation(20)
        p_values.append(permutation_test(models[split[:10]], models[split[10:]], 999, seed).p_value)
    assert kstest(p_values, "uniform").pvalue > 0.05
    assert 0.3 < np.mean(p_values) < 0.7 and min(p_values) < 0.2 and max(p_values) > 0.8


def test_permutation_p_of_clearly_different_groups_is_at_its_minimum():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 10), rng.normal(10, 1, 10)
    result = permutation_test(a, b, 999, seed=3)
    assert (result.p_value, result.n_permutations, result.exact) == (1 / 1000, 999, False)
    assert result.null_median < 3  # shuffled groups differ far less than the observed ~10
    exact = permutation_test([1.0, 2.0, 3.0], [7.0, 8.0, 9.0])
    assert (exact.p_value, exact.n_permutations, exact.exact) == (2 / 20, 20, True)  # this split and its mirror


def divergence_groups(rng, n_models, shift):
    return [rng.standard_normal((300, 3, 3)) + shift for _ in range(n_models)]


def test_divergence_permutation_null_is_uniform_for_one_population_and_minimal_for_two():
    from filterdb.analysis.compare import divergence_permutation
    from filterdb.analysis.divergence import Histograms, divergence, fit_basis

    rng = np.random.default_rng(2)
    same = divergence_groups(rng, 12, 0.0)
    basis = fit_basis(same)
    counts = [Histograms(basis).add(x, float(np.abs(x).max())).counts for x in same]
    p_values = []
    for seed in range(12):
        order = np.random.default_rng(seed).permutation(12)
        a, b = [counts[i] for i in order[:6]], [counts[i] for i in order[6:]]
        observed = divergence([same[i] for i in order[:6]], [same[i] for i in order[6:]], basis=basis).value
        p_values.append(divergence_permutation(basis, a, b, observed, 199, seed).p_value)
    assert 0.2 < np.mean(p_values) < 0.8 and max(p_values) > 0.5
    other = divergence_groups(rng, 6, 0.8)
    basis = fit_basis(same[:6] + other)
    a = [Histograms(basis).add(x, float(np.abs(x).max())).counts for x in same[:6]]
    b = [Histograms(basis).add(x, float(np.abs(x).max())).counts for x in other]
    observed = divergence(same[:6], other, basis=basis).value
    result = divergence_permutation(basis, a, b, observed, 199, 0)
    # C(12, 6) = 924 labelings > 199: sampled; none is as extreme as the observed split
    assert (result.p_value, result.n_permutations) == (1 / 200, 199) and result.null_median < observed / 5


def test_normal_approximations_equal_scipys():
    """Where scipy uses the normal approximation (MWU: both groups over 8; Wilcoxon: over 50 pairs)
    the p-values are computed here without importing scipy.stats: equal to scipy's, ties included."""
    from scipy.stats import mannwhitneyu, wilcoxon

    rng = np.random.default_rng(7)
    for n_a, n_b, ties in ((9, 9, False), (9, 40, True), (120, 80, False), (300, 301, True)):
        a, b = rng.normal(0.2, 1, n_a), rng.normal(0, 1, n_b)
        if ties:
            a, b = np.round(a, 1), np.round(b, 1)
        expected = mannwhitneyu(a, b, alternative="two-sided").pvalue
        assert mann_whitney_p(a, b) == pytest.approx(expected, rel=1e-12, abs=1e-300)
    for n, ties in ((51, False), (80, True), (500, True)):
        d = rng.normal(0.1, 1, n)
        if ties:
            d = np.round(d, 1)  # ties and zeros
        assert wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue, rel=1e-12, abs=1e-300)


def test_resamples_and_labelings_are_shared_not_redrawn():
    """Every metric of a comparison resamples the same models: the same seeded draws, drawn once."""
    from filterdb.analysis.stats import labelings, resample_counts

    first, again = resample_counts((300, 200), 1000, 3), resample_counts((300, 200), 1000, 3)
    assert first[0] is again[0] and first[0].sum(axis=1).tolist() == [300] * 1000 and not first[0].flags.writeable
    rng = np.random.default_rng(3)  # the draws of the generator, whole, counted: the same as drawn in blocks
    for counts, n in zip(first, (300, 200)):
        drawn = rng.integers(0, n, size=(1000, n))
        assert all(np.array_equal(counts[r], np.bincount(drawn[r], minlength=n)) for r in (0, 436, 437, 999))
    masks, exact = labelings(30, 20, 999, 1)
    assert masks is labelings(30, 20, 999, 1)[0] and not exact and (masks.sum(axis=1) == 30).all()


def test_bootstrap_counts_give_the_means_of_the_drawn_resamples():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.1, 40), rng.normal(0.0, 0.1, 25)
    draw = np.random.default_rng(5)  # the definition: resample each group with replacement, in turn
    means_a = a[draw.integers(0, 40, size=(10_000, 40))].mean(axis=1)
    means_b = b[draw.integers(0, 25, size=(10_000, 25))].mean(axis=1)
    expected = np.quantile(means_a - means_b, [0.025, 0.975])
    np.testing.assert_allclose(bootstrap_ci(a, b, seed=5), expected, rtol=1e-12)


def test_columns_give_what_each_column_gives_alone():
    """compare tests every metric of a layer group at once: the same numbers as one metric at a time."""
    from filterdb.analysis.stats import permutation_test_columns, two_sample_columns

    rng = np.random.default_rng(2)
    a, b = rng.normal(0.3, 1, (12, 3)), rng.normal(0, 1, (15, 3))
    a[4, 1] = np.nan  # a metric undefined for one model: that column alone
    for j, (s, p) in enumerate(zip(two_sample_columns(a, b, 4), permutation_test_columns(a, b, 500, 4))):
        alone, perm = two_sample(a[:, j], b[:, j], 4), permutation_test(a[:, j], b[:, j], 500, 4)
        assert (s.n_a, s.n_b, s.mean_a, s.mean_b, s.p_value, s.cliffs_delta) == \
               (alone.n_a, alone.n_b, alone.mean_a, alone.mean_b, alone.p_value, alone.cliffs_delta)
        np.testing.assert_allclose([s.ci_low, s.ci_high], [alone.ci_low, alone.ci_high], rtol=1e-12)
        assert (p.p_value, p.n_permutations, p.exact) == (perm.p_value, perm.n_permutations, perm.exact)
        assert p.null_median == pytest.approx(perm.null_median, rel=1e-12)


def test_large_labelings_are_kept_on_disk_and_equal_the_drawn_ones(tmp_path, monkeypatch):
    from filterdb.analysis import stats

    monkeypatch.setenv("FILTERDB_HOME", str(tmp_path))
    monkeypatch.setattr(stats, "KEEP_DRAWS", 1000)
    drawn = stats._drawn_labelings(30, 20, 99, 5)
    assert np.array_equal(stats._kept_labelings(30, 20, 99, 5), drawn)  # drawn, then kept
    (kept,) = (tmp_path / "cache" / "labelings").iterdir()
    assert np.array_equal(stats._kept_labelings(30, 20, 99, 5), drawn)  # loaded
    damaged = bytearray(kept.read_bytes())
    damaged[-1] ^= 0x80  # one bit of the packed labelings flipped: the digest no longer matches
    kept.write_bytes(bytes(damaged))
    assert np.array_equal(stats._kept_labelings(30, 20, 99, 5), drawn)  # drawn again, not the damaged file
    kept.write_bytes(b"not a numpy file")
    assert np.array_equal(stats._kept_labelings(30, 20, 99, 5), drawn)
    kept.write_bytes(kept.read_bytes()[:40])  # cut short
    assert np.array_equal(stats._kept_labelings(30, 20, 99, 5), drawn)


def test_large_bootstrap_resamples_are_kept_on_disk_and_equal_the_drawn_ones(tmp_path, monkeypatch):
    from filterdb.analysis import kept_draws, stats
    from filterdb.integrity import arrays_digest

    monkeypatch.setenv("FILTERDB_HOME", str(tmp_path))
    monkeypatch.setattr(stats, "KEEP_DRAWS", 1000)
    drawn = stats._drawn_counts((30, 20), 99, 5)
    for _ in range(2):  # drawn and kept, then loaded
        stats.resample_counts.cache_clear()
        kept = stats.resample_counts((30, 20), 99, 5)
        assert all(np.array_equal(k, d) and not k.flags.writeable for k, d in zip(kept, drawn))
    assert [k.dtype for k in kept] == [np.uint8, np.uint8]  # counts of at most 255 kept as bytes
    (path,) = (tmp_path / "cache" / "bootstrap").iterdir()
    arrays, digest = kept_draws.read(path)
    assert digest == arrays_digest(arrays) and np.array_equal(arrays["counts1"], drawn[1])
    damaged = bytearray(path.read_bytes())
    damaged[-1] += 1  # one count of the last resample changed: the digest no longer matches
    path.write_bytes(bytes(damaged))
    stats.resample_counts.cache_clear()
    assert all(np.array_equal(k, d) for k, d in zip(stats.resample_counts((30, 20), 99, 5), drawn))
    arrays, digest = kept_draws.read(path)  # and the file was drawn anew
    assert digest == arrays_digest(arrays) and np.array_equal(arrays["counts1"], drawn[1])
    monkeypatch.setattr(kept_draws, "KEPT_BYTES", 0)  # past the folder's bound: older files go, the newest stays
    stats.resample_counts.cache_clear()
    stats.resample_counts((31, 20), 99, 5)
    assert [p.name.split("-numpy")[0] for p in (tmp_path / "cache" / "bootstrap").iterdir()] == ["31-20-99-seed5"]


def test_exact_distributions_equal_scipys():
    """Where scipy uses its exact null distribution (Mann-Whitney: a group of at most 8, no ties;
    Wilcoxon: at most 50 differences, no ties or zeros) the p-values are computed here, equal to
    scipy's, so that small comparisons (the demo's 8 pairs) need not import scipy.stats."""
    from scipy.stats import mannwhitneyu, wilcoxon

    rng = np.random.default_rng(11)
    for n_a, n_b in ((1, 1), (1, 7), (2, 2), (3, 5), (8, 8), (8, 9), (5, 40), (2, 300), (9, 4), (8, 1000)):
        for shift in (0.0, 0.7, 3.0):  # centre of the null, in between, the far tail (U = n_a n_b)
            a, b = rng.normal(shift, 1, n_a), rng.normal(0, 1, n_b)
            expected = mannwhitneyu(a, b, alternative="two-sided").pvalue
            assert mann_whitney_p(a, b) == pytest.approx(expected, rel=1e-12, abs=1e-300), (n_a, n_b, shift)
    for n in (2, 3, 10, 13, 14, 30, 50):
        for shift in (0.0, 0.5, 5.0):
            d = rng.normal(shift, 1, n)
            assert wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue, rel=1e-12, abs=1e-300), (n, shift)
    # ties or zeros among at most 50 differences: scipy's own permutation test or approximation
    for d in ([0.0, 1.0, -2.0, 3.0, 4.0], [1.0, 1.0, -2.0, 3.0], np.round(rng.normal(0.3, 1, 30), 1)):
        assert wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue, rel=1e-12)


def test_a_comparison_of_small_groups_does_not_import_scipy_stats():
    """The exact p-values of small groups without ties are computed here: no scipy.stats (0.5 s of CPU)."""
    probe = ("import sys, numpy as np; from filterdb.analysis.stats import mann_whitney_p, wilcoxon_p; "
             "rng = np.random.default_rng(0); mann_whitney_p(rng.normal(size=8), rng.normal(size=8)); "
             "wilcoxon_p(rng.normal(size=8)); print('scipy.stats' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_divergence_permutation_is_the_divergence_of_each_labeling():
    """The null through packed counts and SplitDivergences gives, labeling by labeling, the D of
    divergence_from_counts (to 1e-12), and from it the same p-value and median; also within pairs."""
    from filterdb.analysis.compare import divergence_permutation
    from filterdb.analysis.divergence import Histograms, divergence, divergence_from_counts, fit_basis
    from filterdb.analysis.stats import labelings, permutation_p, sign_flips

    rng = np.random.default_rng(7)
    models = divergence_groups(rng, 9, 0.0) + divergence_groups(rng, 9, 0.3)
    basis = fit_basis(models)
    counts = [Histograms(basis).add(x, float(np.abs(x).max())).counts for x in models]
    a, b = counts[:9], counts[9:]
    observed = divergence(models[:9], models[9:], basis=basis).value
    every = np.stack(counts)
    for within_pairs in (False, True):
        if within_pairs:
            signs, exact = sign_flips(9, 199, 3)
            masks = np.concatenate([signs > 0, signs < 0], axis=1)
        else:
            masks, exact = labelings(9, 9, 199, 3)
        direct = np.array([divergence_from_counts(basis, every[m].sum(axis=0), every[~m].sum(axis=0)).value
                           for m in masks])
        result = divergence_permutation(basis, a, b, observed, 199, 3, paired=within_pairs)
        assert result.p_value == permutation_p(observed, direct, exact)
        assert result.null_median == pytest.approx(float(np.median(direct)), rel=1e-12)
        assert (result.n_permutations, result.exact) == (len(masks), exact)


def test_kept_labelings_that_are_not_labelings_of_these_sizes_are_drawn_again(tmp_path, monkeypatch):
    """A kept file whose digest matches but whose rows are not splits of 30 + 20 models (a bit moved
    into the padding past the 50th model) is drawn again."""
    from filterdb import npy_records
    from filterdb.analysis import kept_draws, stats
    from filterdb.integrity import arrays_digest

    monkeypatch.setenv("FILTERDB_HOME", str(tmp_path))
    monkeypatch.setattr(stats, "KEEP_DRAWS", 1000)
    drawn = stats._kept_labelings(30, 20, 99, 5)
    (path,) = (tmp_path / "cache" / "labelings").iterdir()
    arrays, _ = kept_draws.read(path)
    packed = arrays["packed"].copy()
    row = int(np.flatnonzero(drawn[:, 0])[0])
    packed[row, 0] &= 0x7F  # model 0 out of A ...
    packed[row, -1] |= 0x01  # ... and a model that does not exist in: still 30 bits set
    with open(path, "wb") as out:
        npy_records.write(out, {"packed": packed, "digest": np.uint64(arrays_digest({"packed": packed}))})
    assert np.array_equal(stats._kept_labelings(30, 20, 99, 5), drawn)
    assert np.array_equal(kept_draws.read(path)[0]["packed"], np.packbits(drawn, axis=1))  # and kept anew
