"""Divergence between groups of filters: hand-computed cases, the reference definition, streaming."""
import math

import numpy as np
import pytest
from scipy.stats import entropy
from sklearn.decomposition import PCA
from sklearn.utils.extmath import svd_flip

from filterdb.analysis.divergence import (
    EMPTY_BIN,
    DivergenceBasis,
    Histograms,
    PCABasis,
    RangeScan,
    divergence,
    fit_basis,
    symmetric_kl,
)


def ones(values):
    return np.asarray(values, np.float64).reshape(-1, 1, 1)


def test_one_component_by_hand():
    # 1x1 filters scale to +-1 (mean 0, range [-1, 1]): A puts 3/4 in the last bin, B 1/4; the 68
    # empty bins get eps as a density (bin width w = 2/70), so each p sums to 1 + 68 eps w before renormalising
    a, b = ones([0.5, 2.0, 0.1, -1.0]), ones([3.0, -0.2, -1.0, -4.0])
    result = divergence([a], [b])
    assert result.value == pytest.approx(math.log(3) / (1 + 68 * EMPTY_BIN * 2 / 70), rel=1e-12)
    assert result.per_component["evr"].tolist() == [1.0]
    assert (result.n_a, result.n_b) == (4, 4)


def test_identical_groups_have_zero_divergence_and_it_is_symmetric():
    rng = np.random.default_rng(0)
    a = [rng.standard_normal((500, 3, 3)), rng.standard_normal((64, 3, 3))]
    b = [rng.standard_normal((700, 3, 3)) * 0.1 + 0.05]
    assert divergence(a, a).value == 0.0
    assert divergence(a, b).value == pytest.approx(divergence(b, a).value, rel=1e-12)
    assert divergence(a, b).value > 0


def scaled_and_sparse(layers):
    """The authors' ``scale`` (x / max|x|, zero rows kept) and a per-layer sparsity mask."""
    scaled, sparse = [], []
    for x in layers:
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        a = np.abs(x).max(axis=1)
        scaled.append(x / np.where(a == 0, 1, a)[:, None])
        sparse.append(a < 0.01 * a.max() if a.max() > 0 else np.ones(len(x), bool))
    return scaled, sparse


def reference_divergence(reference_layers, group_a, group_b):
    """The authors' pipeline (pca.ipynb) transcribed with off-the-shelf parts: scikit-learn PCA
    with scikit-learn 0.24's sign rule (svd_flip on U), numpy density histograms, scipy KL.
    ``group_a``/``group_b`` are indices into ``reference_layers``."""
    scaled, sparse = scaled_and_sparse(reference_layers)
    fit = np.concatenate([x[~s] for x, s in zip(scaled, sparse)])
    pca = PCA(n_components=fit.shape[1]).fit(fit)
    _, components = svd_flip(pca.transform(fit), pca.components_.copy(), u_based_decision=True)
    pca.components_ = components
    everything = pca.transform(np.concatenate(scaled))
    x_range = everything.min(), everything.max()

    def distributions(indices):
        x = pca.transform(np.concatenate([scaled[i][~sparse[i]] for i in indices]))
        out = []
        for column in x.T:
            v, _ = np.histogram(column, range=x_range, bins=70, density=True)
            v[v == 0] = np.finfo(np.float32).eps
            out.append(v / v.sum())
        return out

    p, q = distributions(group_a), distributions(group_b)
    return sum(r * (entropy(x, y) + entropy(y, x)) for r, x, y in zip(pca.explained_variance_ratio_, p, q))


def test_matches_the_authors_definition_for_two_groups():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3000, 3, 3)) @ np.diag([3, 1, 1]) * 0.1
    b = rng.standard_normal((2000, 3, 3)) * 0.1 + 0.02
    a[:100] *= 1e-4  # sparse filters are dropped from the fit and the histograms, kept in the range
    b[:3] = 0.0
    expected = reference_divergence([a, b], [0], [1])
    assert divergence([a], [b]).value == pytest.approx(expected, rel=1e-9)
    # a reference basis from other layers: the database-wide variant, in memory
    c = rng.standard_normal((4000, 3, 3)) * 0.2 - 0.05
    basis = fit_basis([a, b, c])
    assert divergence([a], [b], basis=basis).value == pytest.approx(reference_divergence([a, b, c], [0], [1]),
                                                                     rel=1e-9)


def test_sparsity_is_judged_per_layer():
    rng = np.random.default_rng(2)
    big, small = rng.standard_normal((400, 3, 3)), rng.standard_normal((400, 3, 3)) * 1e-3
    other = rng.standard_normal((400, 3, 3)) + 0.3
    # as separate layers the small filters count; pooled into one layer they would be sparse
    separate = divergence([big, small], [other])
    assert separate.n_a == 800
    assert divergence([np.concatenate([big, small])], [other]).n_a == 400


def test_chunks_and_shards_add_up_to_one_pass():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200_000, 3, 3)).astype(np.float32)
    basis = fit_basis([x])
    absmax = float(np.abs(x).max())
    whole = Histograms(basis).add(x, absmax)
    parts = Histograms(basis)
    for lo in range(0, len(x), 30_001):
        parts.merge(Histograms(basis).add(x[lo:lo + 30_001], absmax))
    np.testing.assert_array_equal(whole.counts, parts.counts)
    assert whole.count == len(x)
    scan = RangeScan(basis.pca)
    for lo in range(0, len(x), 70_000):
        scan.merge(RangeScan(basis.pca).add(x[lo:lo + 70_000], absmax))
    assert (scan.finish().lo, scan.finish().hi) == (basis.lo, basis.hi)


def test_binning_is_numpys_including_the_range_bounds():
    pca = PCABasis(np.eye(2), np.array([0.5, 0.5]))
    basis = DivergenceBasis(pca, -1.0, 1.0, 0, 0)
    rng = np.random.default_rng(4)
    filters = np.concatenate([rng.uniform(-1, 1, (5000, 2)), [[1.0, -1.0], [-1.0, 1.0], [0.0, 1.0]],
                              np.delete(np.linspace(-1, 1, 71), 35)[:, None].repeat(2, axis=1) * 0.999999]).reshape(-1, 1, 2)
    hist = Histograms(basis).add(filters, 1.0)
    scaled = filters.reshape(-1, 2) / np.abs(filters.reshape(-1, 2)).max(axis=1, keepdims=True)
    for i in range(2):
        np.testing.assert_array_equal(hist.counts[i], np.histogram(scaled[:, i], bins=70, range=(-1, 1))[0])


def test_a_group_without_nonsparse_filters_gives_nan_with_a_reason():
    result = divergence([np.zeros((10, 3, 3))], [np.ones((10, 3, 3))])
    assert math.isnan(result.value) and "first group has no non-sparse filters" in result.reason


def test_symmetric_kl_by_hand():
    p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    expected = 0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75) + 0.25 * math.log(0.5) + 0.75 * math.log(0.75 / 0.5)
    assert symmetric_kl(p, q) == pytest.approx(expected, rel=1e-12)


def test_mixed_kernel_sizes_are_rejected():
    with pytest.raises(ValueError, match="one kernel size"):
        divergence([np.ones((3, 3, 3))], [np.ones((3, 1, 1))])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_projections_and_histograms_are_numpys_bit_for_bit(dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20_000, 3, 3)).astype(dtype)
    x[::11] = 0.0  # all-zero filters
    x[1::7] *= dtype(1e-3)  # sparse ones
    basis = fit_basis([x])
    flat = x.reshape(-1, 9)

    def numpy_projection(rows):  # the same shapes as the kernels' (BLAS rounds by shape)
        w = rows.astype(np.float64)
        a = np.abs(w).max(axis=1)
        return basis.pca.components @ (w / np.where(a > 0, a, 1.0)[:, None] - basis.pca.mean).T

    np.testing.assert_array_equal(basis.pca.project(flat), numpy_projection(flat))
    absmax = float(np.abs(x).max())
    keep = (np.abs(flat).max(axis=1) >= 0.01 * absmax) & (np.abs(flat).max(axis=1) > 0)
    for reuse in (False, True):
        np.testing.assert_array_equal(basis.pca.project(flat[:5000], keep[:5000], reuse), numpy_projection(flat[:5000][keep[:5000]]))
    hist = Histograms(basis).add(x, absmax)
    reference = numpy_projection(flat[keep])
    for i in range(9):
        np.testing.assert_array_equal(hist.counts[i], np.histogram(reference[i], bins=70, range=(basis.lo, basis.hi))[0])


def test_reused_buffers_follow_the_kernel_size():
    rng = np.random.default_rng(6)
    for k in (3, 5, 3, 1):  # one size held at a time: each change replaces the buffers
        x = rng.standard_normal((3000, k, k)).astype(np.float32)
        pca = fit_basis([x]).pca
        flat = x.reshape(len(x), -1)
        np.testing.assert_array_equal(pca.project(flat, reuse=True), pca.project(flat))


def test_split_divergences_equal_the_divergence_of_each_split():
    """The permutation null's D of many splits (empty bins left out of the arithmetic, their share in
    closed form) equals divergence_from_counts of each split: bins empty in both groups, bins empty in
    one, a split leaving a group without filters (-inf), and a basis without variance (D = 0)."""
    from filterdb.analysis.divergence import SplitDivergences, divergence_from_counts

    rng = np.random.default_rng(4)
    d, bins = 3, 70
    per_model = rng.poisson(2.0, size=(10, d, bins))
    per_model[:, :, :20] = 0  # empty in every model
    per_model[:4, :, 60:] = 0  # occupied in some models only
    per_model[:, 1, 30:] = 0  # components with different occupied bins
    basis = DivergenceBasis(PCABasis(np.eye(d), np.array([0.6, 0.3, 0.1])), -1.5, 2.0, 1, 1)
    edges = basis.edges
    masks = rng.random((50, 10)) < 0.5
    masks[0], masks[1] = True, False  # group B empty, group A empty
    splits = SplitDivergences(per_model.sum(axis=0), edges, basis.pca.explained_variance_ratio)
    flat = per_model.reshape(10, -1)[:, splits.columns].astype(np.float32)
    values = splits(masks.astype(np.float32) @ flat, rows=7)
    assert values[0] == values[1] == -np.inf
    for mask, value in zip(masks[2:], values[2:]):
        a, b = per_model[mask].sum(axis=0), per_model[~mask].sum(axis=0)
        assert value == pytest.approx(divergence_from_counts(basis, a, b).value, rel=1e-13, abs=1e-15)
    flat_basis = SplitDivergences(per_model.sum(axis=0), edges, np.full(d, np.nan))
    assert (flat_basis(masks[2:].astype(np.float32) @ flat) == 0).all()


def test_binning_kernel_is_numpys_histogram_at_the_edges_and_outside():
    """The compiled binning (a vectorised guess, numpy's correction for values near an edge) counts
    what numpy.histogram counts: random projections, every edge exactly and one ulp either side, the
    range's max (the last bin is closed), values outside, and a range far from zero whose bins are
    a few ulps wide (where every value is corrected)."""
    from filterdb.analysis.projection_kernels import add_bin_counts

    rng = np.random.default_rng(7)
    for lo, hi in ((-1.7, 2.3), (0.0, 1e-300), (1e6, 1e6 + 1e-7), (-3.0, -3.0 + 70 * 2.0 ** -40)):
        edges = np.linspace(lo, hi, 71)
        special = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf),
                                  [lo - 1, hi + 1, hi, hi, lo]])
        p = rng.uniform(lo - (hi - lo) * 0.1, hi + (hi - lo) * 0.1, (9, 70_001))
        p[:, :len(special)] = special
        p[3] = rng.permutation(p[3])
        counts = np.zeros((9, 70), np.int64)
        add_bin_counts(p, edges, counts)
        add_bin_counts(p[:, :1001], edges, counts)  # counts add up across calls
        for i in range(9):
            expected = np.histogram(p[i], bins=edges)[0] + np.histogram(p[i, :1001], bins=edges)[0]
            np.testing.assert_array_equal(counts[i], expected)
