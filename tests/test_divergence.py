"""Divergence between groups of filters: hand-computed cases, the reference definition, streaming."""
import math

import numpy as np
import pytest
from scipy.stats import entropy
from sklearn.decomposition import PCA

from filterdb.analysis.divergence import EMPTY_BIN, Histograms, PCABasis, divergence, symmetric_kl
from filterdb.analysis.metrics import Moments, linf_scaled_nonsparse


def ones(values):
    return np.asarray(values, np.float64).reshape(-1, 1, 1)


def test_one_component_by_hand():
    # 1x1 filters scale to +-1: A puts 3/4 at +1, B 1/4; 68 empty bins get eps in both
    a, b = ones([0.5, 2.0, 0.1, -1.0]), ones([3.0, -0.2, -1.0, -4.0])
    result = divergence([a], [b])
    assert result.value == pytest.approx(math.log(3) / (1 + 68 * EMPTY_BIN), rel=1e-12)
    assert result.per_component["evr"].tolist() == [1.0]
    assert (result.n_a, result.n_b) == (4, 4)


def test_identical_groups_have_zero_divergence_and_it_is_symmetric():
    rng = np.random.default_rng(0)
    a = [rng.standard_normal((500, 3, 3)), rng.standard_normal((64, 3, 3))]
    b = [rng.standard_normal((700, 3, 3)) * 0.1 + 0.05]
    assert divergence(a, a).value == 0.0
    assert divergence(a, b).value == pytest.approx(divergence(b, a).value, rel=1e-12)
    assert divergence(a, b).value > 0


def reference_divergence(a, b, bins=70):
    """The definition with off-the-shelf parts: sklearn PCA, numpy density histograms, scipy KL."""
    a, b = linf_scaled_nonsparse(a), linf_scaled_nonsparse(b)
    pca = PCA().fit(np.concatenate([a, b]))
    total = 0.0
    for i, v in enumerate(pca.components_):
        half = np.abs(v).sum()
        p, _ = np.histogram(a @ v, bins, range=(-half, half), density=True)
        q, _ = np.histogram(b @ v, bins, range=(-half, half), density=True)
        p, q = p / p.sum(), q / q.sum()
        p[p == 0], q[q == 0] = EMPTY_BIN, EMPTY_BIN
        total += pca.explained_variance_ratio_[i] * (entropy(p, q) + entropy(q, p))
    return total


def test_matches_the_reference_definition():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3000, 3, 3)) @ np.diag([3, 1, 1]) * 0.1
    b = rng.standard_normal((2000, 3, 3)) * 0.1 + 0.02
    a[:100] *= 1e-4  # sparse filters are dropped
    assert divergence([a], [b]).value == pytest.approx(reference_divergence(a, b), rel=1e-9)


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
    basis = PCABasis.from_moments(Moments.of(linf_scaled_nonsparse(x)))
    absmax = float(np.abs(x).max())
    whole = Histograms(basis).add(x, absmax)
    parts = Histograms(basis)
    for lo in range(0, len(x), 30_001):
        parts.merge(Histograms(basis).add(x[lo:lo + 30_001], absmax))
    np.testing.assert_array_equal(whole.counts, parts.counts)
    assert whole.count == len(x)


def test_projections_at_the_range_bound_land_in_the_edge_bins():
    basis = PCABasis(np.eye(2), np.array([0.5, 0.5]))
    hist = Histograms(basis, bins=4).add(np.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.2]]).reshape(3, 1, 2), 1.0)
    # the third filter scales to (0, 1): 0 is the left edge of bin 2, 1 the right bound of bin 3
    np.testing.assert_array_equal(hist.counts, [[1, 0, 1, 1], [1, 0, 0, 2]])


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
