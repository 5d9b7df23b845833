"""Per-layer metrics: hand-computed values, the edge cases of their definitions, and properties."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterdb.analysis import metrics as M
from filterdb.analysis.metrics import UndefinedMetricWarning


def unit(i, k=3, scale=1.0):
    """A k x k filter that is ``scale`` at flat position i and 0 elsewhere."""
    f = np.zeros(k * k)
    f[i] = scale
    return f.reshape(k, k)


def all_metrics(filters, out_channels):
    values, _ = M.layer_metrics(filters, out_channels=out_channels)
    return values


# ---------------------------------------------------------------------------- hand-computed values

def test_sparsity_counts_filters_below_one_percent_of_the_layer_max():
    filters = np.stack([unit(0, scale=1.0), unit(1, scale=0.005), unit(2, scale=0.02), np.zeros((3, 3))])
    assert M.sparsity(filters) == 0.5  # 0.005 and the zero filter are below 0.01 * 1.0
    assert M.sparsity(filters, eps=0.03) == 0.75
    assert all_metrics(filters, 4)["sparsity"] == 0.5


def test_variance_entropy_raw_and_linf_by_hand():
    # centered scatter = diag(8, 2): p = (0.8, 0.2); after L-inf scaling diag(2, 2): p = (0.5, 0.5)
    filters = np.stack([unit(0, scale=2), unit(0, scale=-2), unit(1), unit(1, scale=-1)])
    raw = -(0.8 * math.log10(0.8) + 0.2 * math.log10(0.2))
    assert M.variance_entropy_raw(filters) == pytest.approx(raw, abs=1e-12)
    assert M.variance_entropy_linf(filters) == pytest.approx(math.log10(2), abs=1e-12)
    assert M.variance_entropy(filters) == M.variance_entropy_linf(filters)  # the default variant
    values = all_metrics(filters, 4)
    assert values["ve_raw"] == pytest.approx(raw, abs=1e-12)
    assert values["ve_linf"] == pytest.approx(math.log10(2), abs=1e-12)


def test_variance_entropy_reaches_log10_9_for_isotropic_filters():
    filters = np.stack([unit(i, scale=s) for i in range(9) for s in (1, -1)])
    assert M.variance_entropy_raw(filters) == pytest.approx(math.log10(9), abs=1e-12)
    values = all_metrics(filters, 18)
    f18 = 1.2618047 / (1 + math.exp(-0.88767525 * (math.log2(18) - 2.30436435))) - 0.31050834
    assert values["ve_normalized"] == pytest.approx(math.log10(9) / f18, abs=1e-12)
    assert M.normalized_variance_entropy(filters) == pytest.approx(math.log10(9) / f18, abs=1e-12)


def test_variance_entropy_of_other_kernel_sizes():
    five = np.stack([unit(i, k=5, scale=s) for i in range(25) for s in (1, -1)])
    assert M.variance_entropy_raw(five) == pytest.approx(math.log10(25), abs=1e-12)
    one = np.array([[[1.0]], [[2.0]], [[-1.0]]])
    with pytest.warns(M.UndefinedMetricWarning, match="1x1 filters"):  # one dimension: 0 by construction
        assert math.isnan(M.variance_entropy_raw(one))
    ones = all_metrics(one, 3)
    assert all(math.isnan(ones[m]) for m in ("ve_raw", "ve_linf", "ve_normalized"))
    assert "variance entropy undefined for 1x1 filters" in ones["notes"]
    values = all_metrics(five, 50)
    assert math.isnan(values["ve_normalized"]) and "3x3" in values["notes"]


def test_orthogonality_by_hand():
    # two output channels at 45 degrees: |G - I| off-diagonal = 2 * cos 45
    weight = np.array([[1.0, 0, 0, 0], [1.0, 1.0, 0, 0]]).reshape(2, 1, 2, 2)
    assert M.orthogonality(weight) == pytest.approx(1 - math.sqrt(0.5), abs=1e-12)
    # a zero row stays zero and adds 1 on the diagonal: c = 1 / (3 * 2)
    weight = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 0]]).reshape(3, 1, 2, 2)
    assert M.orthogonality(weight) == pytest.approx(5 / 6, abs=1e-12)
    assert all_metrics(weight.reshape(3, 2, 2), 3)["orthogonality"] == pytest.approx(5 / 6, abs=1e-12)


def test_orthogonality_rows_span_all_input_channels():
    # out=2, in=2: row 0 = (e0, e0), row 1 = (e0, -e0) are orthogonal though their filters are parallel
    filters = np.stack([unit(0), unit(0), unit(0), unit(0, scale=-1)])
    assert M.orthogonality(filters, out_channels=2) == pytest.approx(1.0, abs=1e-12)
    assert M.orthogonality(filters, out_channels=4) == pytest.approx(0.0, abs=1e-12)  # 4 parallel rows


def test_norms_by_hand():
    filters = np.array([[[1.0, -2.0], [0.0, 2.0]], [[0.0, 0.0], [0.0, -4.0]]])
    assert M.l1_norm(filters) == 9.0
    assert M.l2_norm(filters) == 5.0
    values = all_metrics(filters, 2)
    assert (values["l1_norm"], values["l2_norm"]) == (9.0, 5.0)


def test_random_entropy_floor_matches_the_published_fit():
    assert M.random_entropy_floor(64) == pytest.approx(
        1.2618047 / (1 + math.exp(-0.88767525 * (6 - 2.30436435))) - 0.31050834, abs=1e-15)
    assert M.random_entropy_floor(2) < 0 < M.random_entropy_floor(3)


# ---------------------------------------------------------------------------- edge cases

def test_all_zero_layer():
    values = all_metrics(np.zeros((12, 3, 3), np.float32), 4)
    assert values["sparsity"] == 1.0
    assert values["ve_raw"] == 0.0  # identical (zero) filters: no spread
    assert math.isnan(values["ve_linf"]) and "no non-sparse filters" in values["notes"]
    assert math.isnan(values["ve_normalized"])
    assert math.isnan(values["orthogonality"]) and "all-zero layer" in values["notes"]
    assert (values["l1_norm"], values["l2_norm"]) == (0.0, 0.0)
    with pytest.warns(UndefinedMetricWarning, match="all-zero"):
        assert math.isnan(M.orthogonality(np.zeros((4, 3, 3, 3))))
    with pytest.warns(UndefinedMetricWarning, match="no non-sparse"):
        assert math.isnan(M.variance_entropy_linf(np.zeros((4, 3, 3))))


def test_one_filter():
    values = all_metrics(unit(4, scale=-3.0)[None], 1)
    assert values["sparsity"] == 0.0
    assert math.isnan(values["ve_raw"]) and math.isnan(values["ve_linf"])
    assert "single filter has no variance" in values["notes"]
    assert math.isnan(values["orthogonality"])
    assert (values["l1_norm"], values["l2_norm"]) == (3.0, 3.0)
    with pytest.warns(UndefinedMetricWarning, match="single filter"):
        assert math.isnan(M.variance_entropy_raw(unit(0)[None]))


def test_one_output_channel():
    weight = np.stack([unit(0), unit(1), unit(0, scale=-1), unit(1, scale=-1)])[None]  # (1, 4, 3, 3)
    values = all_metrics(weight, None)
    assert math.isnan(values["orthogonality"]) and "single output channel" in values["notes"]
    assert values["ve_raw"] == pytest.approx(math.log10(2), abs=1e-12)  # the other metrics stay defined
    with pytest.warns(UndefinedMetricWarning, match="single output channel"):
        assert math.isnan(M.orthogonality(weight))


def test_two_nonsparse_filters_have_no_normalized_entropy():
    filters = np.stack([unit(0), unit(1)])
    values = all_metrics(filters, 2)
    assert values["ve_linf"] == 0.0  # two points always lie on a line: one direction, p = (1,)
    assert math.isnan(values["ve_normalized"]) and "<= 0" in values["notes"]
    with pytest.warns(UndefinedMetricWarning, match="<= 0"):
        assert math.isnan(M.normalized_variance_entropy(filters))


def test_identical_filters():
    rng = np.random.default_rng(0)
    filters = np.repeat(rng.standard_normal((1, 3, 3)).astype(np.float32), 20_000, axis=0)  # several blocks
    values = all_metrics(filters, 100)
    assert values["ve_raw"] == 0.0 and values["ve_linf"] == 0.0
    assert values["orthogonality"] == pytest.approx(0.0, abs=1e-6)  # all rows parallel
    assert values["sparsity"] == 0.0


def test_orthonormal_filters():
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((18, 18)))
    weight = q[:8].reshape(8, 2, 3, 3)  # 8 orthonormal rows of 2 * 9 weights
    assert M.orthogonality(weight) == pytest.approx(1.0, abs=1e-12)
    assert all_metrics(weight, None)["orthogonality"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_weights_are_rejected_naming_the_layer(bad):
    filters = np.ones((4, 3, 3), np.float32)
    filters[2, 1, 1] = bad
    with pytest.raises(ValueError, match=r"model m1 layer conv1: 1 NaN/Inf"):
        M.layer_metrics(filters, 2, where="model m1 layer conv1")
    with pytest.raises(ValueError, match="NaN/Inf"):
        M.sparsity(filters)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="expected"):
        M.sparsity(np.ones(5))
    with pytest.raises(ValueError, match="do not split"):
        M.orthogonality(np.ones((6, 3, 3)), out_channels=4)
    with pytest.raises(ValueError, match="real"):
        M.sparsity(np.ones((2, 3, 3), complex))


# ---------------------------------------------------------------------------- the fast path agrees

def reference(filters, out_channels):
    """Straightforward definitions: SVD of the centered matrix, explicit Gram matrix."""
    w = filters.reshape(len(filters), -1).astype(np.float64)

    def ve(x):
        s = np.linalg.svd(x - x.mean(0), compute_uv=False)
        p = s ** 2 / (s ** 2).sum()
        p = p[p > 0]
        return -(p * np.log10(p)).sum()
    a = np.abs(w).max(1)
    keep = a >= 0.01 * a.max()
    rows = w.reshape(out_channels, -1)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit_rows = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    g = unit_rows @ unit_rows.T
    c = np.abs(g - np.eye(out_channels)).sum() / (out_channels * (out_channels - 1))
    return {"sparsity": 1 - keep.mean(), "ve_raw": ve(w), "ve_linf": ve(w[keep] / a[keep, None]),
            "orthogonality": 1 - c, "l1_norm": np.abs(w).sum(), "l2_norm": np.sqrt((w ** 2).sum())}


@pytest.mark.parametrize("dead", [0.0, 0.1, 0.7])  # no sparse filters, a few, most (both code paths)
def test_layer_metrics_match_the_definitions_across_blocks(dead):
    rng = np.random.default_rng(3)
    filters = (rng.standard_normal((200, 100, 3, 3)) * 0.2 + 0.05).astype(np.float32)
    flat = filters.reshape(-1, 3, 3)
    flat[rng.random(len(flat)) < dead] *= 1e-3
    values, moments = M.layer_metrics(filters)
    expected = reference(flat, 200)
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert moments.count == values["n_nonsparse"] == round((1 - expected["sparsity"]) * len(flat))


# ---------------------------------------------------------------------------- properties

def layers(min_filters=2):
    """(filters, out_channels) on an integer grid: exact in float32 and well separated."""
    return st.tuples(st.integers(1, 6), st.integers(1, 5), st.sampled_from([1, 2, 3]), st.integers(0, 2 ** 31)).map(
        lambda t: _grid_layer(*t)).filter(lambda layer: len(layer[0]) >= min_filters)


def _grid_layer(out, inp, k, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(-8, 9, size=(out * inp, k, k)).astype(np.float32), out


def same(a, b, tol=1e-6):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=tol, abs=tol)


@settings(max_examples=60, deadline=None)
@given(layers(), st.sampled_from([2.0 ** -7, 0.37, 3.0, 1000.0]))
def test_scaling_a_layer_leaves_shape_metrics_unchanged(layer, factor):
    filters, out = layer
    a, b = all_metrics(filters, out), all_metrics(filters * np.float32(factor), out)
    for name in ("sparsity", "ve_raw", "ve_linf", "ve_normalized", "orthogonality"):
        assert same(a[name], b[name]), name
    assert b["l1_norm"] == pytest.approx(a["l1_norm"] * factor, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(layers(), st.randoms(use_true_random=False))
def test_permuting_filters_leaves_every_metric_unchanged(layer, random):
    filters, out = layer
    inp = len(filters) // out
    weight = filters.reshape(out, inp, *filters.shape[1:])
    out_perm, in_perm = random.sample(range(out), out), random.sample(range(inp), inp)
    a = all_metrics(filters, out)
    b = all_metrics(weight[out_perm][:, in_perm].reshape(filters.shape), out)  # channels permuted
    shuffled = filters[random.sample(range(len(filters)), len(filters))]  # any order of filters
    c = all_metrics(shuffled, out)
    for name in M.METRIC_NAMES:
        assert same(a[name], b[name]), name
        if name != "orthogonality":  # rows are output channels: only channel permutations keep them
            assert same(a[name], c[name]), name


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2 ** 31))
def test_orthonormal_rows_give_orthogonality_one(m, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((2 * 9 * 2, m)))
    weight = q.T.reshape(m, 4, 3, 3)  # m orthonormal rows of 36 weights
    assert M.orthogonality(weight) == pytest.approx(1.0, abs=1e-10)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 300), st.sampled_from([3, 5]), st.integers(0, 2 ** 31))
def test_identical_filters_give_variance_entropy_zero(n, k, seed):
    one = np.random.default_rng(seed).standard_normal((1, k, k)).astype(np.float32)
    filters = np.repeat(one, n, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.variance_entropy_raw(filters) == 0.0
    values = all_metrics(filters, 1)
    assert values["ve_raw"] == 0.0
    assert values["ve_linf"] == (0.0 if np.abs(one).max() > 0 else math.nan)


# ---------------------------------------------------------------------------- the compiled pass

@pytest.mark.parametrize("k", [1, 3, 5])  # 3x3 has its own unrolled loop; the others share the general one
def test_layer_metrics_match_the_definitions_for_other_kernels_and_dtypes(k):
    rng = np.random.default_rng(k)
    weight = rng.standard_normal((40, 30, k, k)) * 0.3 - 0.1  # float64 weights, an offset mean
    weight[:, :3] = 0.0  # all-zero filters: left out of the scaled sums from the start
    weight[5, 7] *= 1e-4  # one sparse filter that is not zero: taken out afterwards
    values, moments = M.layer_metrics(weight)
    expected = reference(weight.reshape(-1, k, k), 40)
    for name, value in expected.items():
        if k == 1 and name.startswith("ve"):
            continue  # 1x1 variance entropy has its own definition
        assert values[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert values["n_nonsparse"] == moments.count == round((1 - expected["sparsity"]) * 1200)
    assert moments.count <= 40 * 27 - 1
    flat = weight.reshape(-1, k * k)
    assert moments.scatter == pytest.approx(M.Moments.of(M.linf_scaled_nonsparse(flat)).scatter, rel=1e-10, abs=1e-12)


def test_layer_metrics_of_a_strided_view_equal_those_of_its_copy():
    filters = np.random.default_rng(4).standard_normal((600, 3, 3)).astype(np.float32)
    view = filters[::2]  # not contiguous
    a, b = all_metrics(view, 30), all_metrics(np.ascontiguousarray(view), 30)
    for name in M.METRIC_NAMES:
        assert a[name] == b[name], name


def test_identical_float64_filters_give_variance_entropy_zero():
    one = np.random.default_rng(6).standard_normal((1, 3, 3)) / 3.0  # float64: k * x is not exact
    values = all_metrics(np.repeat(one, 777, axis=0), 7)
    assert values["ve_raw"] == 0.0 and values["ve_linf"] == 0.0


def test_nan_in_float64_weights_is_rejected_by_the_pass():
    filters = np.ones((1000, 5, 5))
    filters[999, 4, 4] = np.nan
    with pytest.raises(ValueError, match="layer x: 1 NaN/Inf"):
        M.layer_metrics(filters, 10, where="layer x")


def test_eps_zero_keeps_all_zero_filters_as_zero_vectors():
    rng = np.random.default_rng(8)
    filters = rng.standard_normal((300, 3, 3)).astype(np.float32)
    filters[::7] = 0.0
    values, moments = M.layer_metrics(filters, 30, eps=0.0)
    w = filters.reshape(300, 9).astype(np.float64)
    a = np.abs(w).max(1)
    scaled = np.divide(w, a[:, None], out=np.zeros_like(w), where=a[:, None] > 0)  # nothing sparse at eps 0
    s = np.linalg.svd(scaled - scaled.mean(0), compute_uv=False) ** 2
    p = s / s.sum()
    assert values["ve_linf"] == pytest.approx(-(p * np.log10(p)).sum(), rel=1e-12)
    assert values["n_nonsparse"] == moments.count == 300 and values["sparsity"] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_absmax_equals_numpy_on_signs_zeros_and_views(dtype):
    from filterdb.analysis.projection_kernels import row_absmax

    w = np.random.default_rng(9).standard_normal((500, 9)).astype(dtype)
    w[::5] = 0.0
    w[1::5] = -0.0
    w[2::5, 4] = -7.0  # the largest magnitude is negative
    for x in (w, w[::3], w[:, ::2], np.empty((0, 9), dtype)):
        got = row_absmax(x)
        assert got.dtype == dtype and np.array_equal(got, np.abs(x).max(axis=1) if len(x) else np.zeros(0, dtype))


# ---------------------------------------------------------------------------- the fast path against the definitions

def transcribed(w, out_channels, eps=0.01):
    """Each definition as its docstring writes it, in float64: numpy's SVD and an explicit unit-row Gram matrix."""
    w = w.reshape(len(w), -1).astype(np.float64)
    a = np.abs(w).max(1)
    sparse = a < eps * a.max()

    def ve(x):
        s = np.linalg.svd(x - x.mean(0), compute_uv=False)
        lam = s ** 2 / (len(x) - 1)
        p = lam / lam.sum()
        p = p[p > 0]
        return -(p * np.log10(p)).sum()
    rows = w.reshape(out_channels, -1)
    norms = np.sqrt((rows ** 2).sum(1))
    unit_rows = np.divide(rows, norms[:, None], out=np.zeros_like(rows), where=norms[:, None] > 0)
    g = unit_rows @ unit_rows.T
    m = out_channels
    return {"sparsity": sparse.mean(), "ve_raw": ve(w), "ve_linf": ve(w[~sparse] / a[~sparse, None]),
            "orthogonality": 1 - np.abs(g - np.eye(m)).sum() / (m * (m - 1)),
            "l1_norm": np.abs(w).sum(), "l2_norm": np.sqrt((w ** 2).sum())}


@pytest.mark.parametrize("k", [2, 3, 4])  # d = 4, 9, 16: the product tiles' tail rows, none, one
@pytest.mark.parametrize("dead", [0.0, 0.2, 0.8])  # sparse filters: none, taken out, the rest summed afresh
def test_layer_metrics_equal_the_transcribed_definitions_in_float64(k, dead):
    rng = np.random.default_rng(10 * k + int(10 * dead))
    weight = rng.standard_normal((24, 45, k, k)) * 0.4 + 0.1  # 1,080 filters: several blocks and a partial one
    flat = weight.reshape(-1, k, k)
    flat[rng.random(len(flat)) < dead] *= 1e-3
    flat[::97] = 0.0
    weight[3] = 0.0  # a zero output channel: 1 on the diagonal of |G - I|
    values, _ = M.layer_metrics(weight)
    for name, value in transcribed(flat, 24).items():
        assert values[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_orthogonality_of_a_float32_layer_large_enough_for_a_float32_gram_matrix():
    rng = np.random.default_rng(11)
    weight = (rng.standard_normal((256, 128, 3, 3)) + 0.3).astype(np.float32)  # 256^2 * 1152 >= 2^26 multiply-adds
    weight[7] = 0.0
    expected = transcribed(weight.reshape(-1, 3, 3), 256)["orthogonality"]
    assert M.orthogonality(weight) == pytest.approx(expected, rel=1e-6)
    assert all_metrics(weight, None)["orthogonality"] == pytest.approx(expected, rel=1e-6)


def test_a_filter_exactly_at_the_sparsity_threshold_is_not_sparse():
    filters = np.stack([unit(0)] * 300 + [unit(1, scale=0.25), unit(2, scale=np.nextafter(0.25, 0))])
    values = M.layer_metrics(filters, 302, eps=0.25)[0]  # the sparse filter is in the last, partial block
    assert values["n_nonsparse"] == 301 and values["sparsity"] == 1 / 302 == M.sparsity(filters, eps=0.25)


def test_finite_weights_whose_float32_sum_overflows_are_accepted():
    filters = np.full((4, 3, 3), 3e38, np.float32)
    assert M.l1_norm(filters) == pytest.approx(36 * 3e38, rel=1e-6)
    filters[1, 1, 1] = np.inf
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        M.l1_norm(filters)
