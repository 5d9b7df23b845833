"""Per-layer filter metrics: sparsity, variance entropy, orthogonality, norms.

A layer's filters are an ``(n, kh, kw)`` array (or the ``(out, in, kh, kw)`` weight), read
as the ``n x d`` matrix W with d = kh*kw. Any kernel size works; 3x3 is the usual one.

Each public function validates its input, has its formula in its docstring, and returns
NaN for an undefined case while warning with an :class:`UndefinedMetricWarning` that says
why. NaN or Inf weights raise ``ValueError``. :func:`layer_metrics` computes every metric
of a layer in one go (no warnings; the reasons land in its ``notes``): one compiled pass
over the filters (:mod:`filterdb.analysis.layer_sums`) and the Gram matrix of
orthogonality, its off-diagonal cosines summed in one compiled pass over it; it is the
fast path used on databases.

Variance entropy comes in two variants, each with its own name:

- ``ve_raw``: on the filters as they are.
- ``ve_linf``: on the filters scaled by their own L-inf norm, sparse filters removed, as in
  *Adversarial Robustness through the Lens of Convolutional Filters*. **This is the
  default** (:data:`DEFAULT_VE`): it measures the diversity of filter *shapes*, unaffected
  by the magnitudes that adversarial training shrinks and by dead filters.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

SPARSITY_EPS = 0.01
VE_VARIANTS = ("ve_raw", "ve_linf")
DEFAULT_VE = "ve_linf"
METRIC_NAMES = ("sparsity", "ve_raw", "ve_linf", "ve_normalized", "orthogonality", "l1_norm", "l2_norm")
METRIC_DOCS = {
    "sparsity": "share of filters whose max |w| is below 0.01 * the layer's max |w|",
    "ve_raw": "variance entropy of the raw filters (log10; max log10(kh*kw))",
    "ve_linf": "variance entropy of the L-inf-scaled non-sparse filters (the default VE)",
    "ve_normalized": "ve_linf / f(n), the fitted minimum of random 3x3 layers; > 1 looks random",
    "orthogonality": "1 - mean |off-diagonal| of the Gram matrix of unit-length output-channel rows",
    "l1_norm": "sum of |w| over the layer",
    "l2_norm": "sqrt of the sum of w^2 over the layer",
}

_FLOAT32_GRAM_FROM = 1 << 26  # multiply-adds from which the Gram matrix is computed in float32 (error ~1e-7)


class UndefinedMetricWarning(RuntimeWarning):
    """A metric is undefined for this input and was returned as NaN; the message says why."""


def _nan(reason: str | None) -> float:
    if reason:
        warnings.warn(reason, UndefinedMetricWarning, stacklevel=3)
    return math.nan


# ---------------------------------------------------------------------------- input

def as_filter_matrix(filters, where: str = "filters", check_values: bool = True) -> np.ndarray:
    """``filters`` as an ``(n, d)`` floating array (a view when possible).

    Accepts ``(n, kh, kw)`` filters, an ``(out, in, kh, kw)`` weight or an ``(n, d)`` matrix.
    Rejects other shapes, non-real dtypes and (unless ``check_values`` is false) NaN/Inf
    weights, naming ``where``.
    """
    w = np.asarray(filters)
    if w.dtype.kind not in "fiu" or w.dtype.kind == "c":
        raise ValueError(f"{where}: weights must be real numbers, got dtype {w.dtype}")
    if w.dtype.kind in "iu":
        w = w.astype(np.float64)
    if w.ndim == 4:
        w = w.reshape(-1, w.shape[-2] * w.shape[-1])
    elif w.ndim == 3:
        w = w.reshape(w.shape[0], -1)
    elif w.ndim != 2:
        raise ValueError(f"{where}: expected (n, kh, kw) filters or an (out, in, kh, kw) weight, got shape {w.shape}")
    if check_values:
        check_finite(w, where)
    return w


def check_finite(w: np.ndarray, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` if ``w`` holds NaN or Inf.

    A finite sum in ``w``'s own dtype (one read, no conversion) proves it; a sum that overflowed
    is settled element by element."""
    with np.errstate(over="ignore"):
        total = np.sum(w)
    if np.isfinite(total) or np.isfinite(w).all():
        return
    bad = int(np.count_nonzero(~np.isfinite(w)))
    raise ValueError(f"{where}: {bad} NaN/Inf weight(s); metrics are defined for finite weights only")


def _out_channels(filters, out_channels: int | None) -> int:
    shape = np.shape(filters)
    if out_channels is None:
        if len(shape) != 4:
            raise ValueError("orthogonality needs out_channels for (n, kh, kw) filters (or pass the 4-D weight)")
        out_channels = shape[0]
    return int(out_channels)


# ---------------------------------------------------------------------------- public metrics

def sparsity(filters, eps: float = SPARSITY_EPS) -> float:
    """Share of sparse filters: ``mean_i [ max_j |w_ij| < eps * max_ij |w_ij| ]``.

    An all-zero layer counts as fully sparse (1.0): every filter is zero. NaN for no filters.
    """
    w = as_filter_matrix(filters)
    if w.shape[0] == 0:
        return _nan("no filters")
    a = np.abs(w).max(axis=1)
    return float(np.mean(_sparse_mask(a, eps)))


def variance_entropy_raw(filters) -> float:
    """Variance entropy of the raw filters.

    Center the columns of W (n x d), take its singular values s, ``lambda = s^2 / (n-1)``,
    ``p = lambda / sum(lambda)``, ``VE = -sum_i p_i log10 p_i`` (terms with p_i = 0 count 0).
    Computed from the eigenvalues of the d x d centered scatter matrix, which equal s^2.
    Ranges over [0, log10(d)]. Identical filters (no variance) give 0; a single filter NaN;
    1x1 filters NaN (one dimension: 0 by construction, not a measurement).
    """
    w = as_filter_matrix(filters)
    value, reason = _ve_from_moments(Moments.of(w))
    return value if reason is None else _nan(reason)


def variance_entropy_linf(filters, eps: float = SPARSITY_EPS) -> float:
    """Variance entropy of the L-inf-scaled, non-sparse filters (the default variant).

    Drop the sparse filters (see :func:`sparsity`), divide each remaining filter by its
    own max |w|, then :func:`variance_entropy_raw`. NaN if fewer than two filters remain.
    """
    w = as_filter_matrix(filters)
    value, reason = _ve_from_moments(Moments.of(linf_scaled_nonsparse(w, eps)), what="non-sparse filter")
    return value if reason is None else _nan(reason)


def variance_entropy(filters, variant: str = DEFAULT_VE, eps: float = SPARSITY_EPS) -> float:
    """Variance entropy under ``variant``: ``"ve_linf"`` (default) or ``"ve_raw"``."""
    if variant == "ve_linf":
        return variance_entropy_linf(filters, eps)
    if variant == "ve_raw":
        return variance_entropy_raw(filters)
    raise ValueError(f"unknown variance entropy variant {variant!r}; choose one of {', '.join(VE_VARIANTS)}")


def random_entropy_floor(n) -> np.ndarray | float:
    """Fitted minimum variance entropy of random 3x3 layers of n filters:
    ``f(n) = 1.2618047 / (1 + exp(-0.88767525 (log2 n - 2.30436435))) - 0.31050834``."""
    x = np.log2(np.asarray(n, dtype=np.float64))
    return 1.2618047 / (1.0 + np.exp(-0.88767525 * (x - 2.30436435))) - 0.31050834


def normalized_variance_entropy(filters, eps: float = SPARSITY_EPS) -> float:
    """``ve_linf / f(m)`` with m the number of non-sparse filters and f :func:`random_entropy_floor`.

    Values above 1 look random. NaN where ve_linf is NaN, where f(m) <= 0 (m <= 2: the fit
    would flip the sign) and for kernels other than 3x3 (the fit is for 3x3 filters).
    """
    w = as_filter_matrix(filters)
    m = Moments.of(linf_scaled_nonsparse(w, eps))
    value, reason = _normalized_ve(*_ve_from_moments(m, what="non-sparse filter"), m.count, w.shape[1])
    return value if reason is None else _nan(reason)


def orthogonality(filters, out_channels: int | None = None) -> float:
    """Orthogonality of the output channels: ``1 - sum|G - I| / (m (m - 1))``.

    Rows R = the weight reshaped to one row per output channel (m = out_channels rows of
    in*kh*kw), each scaled to unit length (zero rows stay zero), G = R R^T. A zero row
    thus adds 1 on the diagonal of |G - I|. 1 for orthonormal rows, 0 for parallel ones.
    NaN for a single output channel and for an all-zero layer (no directions at all).
    G is R R^T of the unscaled rows (one symmetric BLAS product), each entry then divided by
    both row norms; in float32 for float32 layers of at least 2**26 multiply-adds (as the
    authors' code computes it: error ~1e-7), in float64 otherwise.
    """
    m = _out_channels(filters, out_channels)
    w = as_filter_matrix(filters)
    value, reason = _orthogonality(w, m)
    return value if reason is None else _nan(reason)


def l1_norm(filters) -> float:
    """``sum_ij |w_ij|`` over the layer."""
    return float(np.abs(as_filter_matrix(filters)).sum(dtype=np.float64))


def l2_norm(filters) -> float:
    """``sqrt(sum_ij w_ij^2)`` over the layer."""
    w = as_filter_matrix(filters).astype(np.float64, copy=False).ravel()
    return float(math.sqrt(np.dot(w, w)))


def linf_scaled_nonsparse(filters, eps: float = SPARSITY_EPS) -> np.ndarray:
    """The non-sparse filters of a layer, each divided by its own max |w| (float64, n' x d)."""
    w = as_filter_matrix(filters).astype(np.float64, copy=False)
    a = np.abs(w).max(axis=1) if len(w) else np.zeros(0)
    keep = ~_sparse_mask(a, eps)
    return w[keep] / a[keep, None]


# ---------------------------------------------------------------------------- moments

@dataclass
class Moments:
    """Count, mean and centered scatter ``sum (x - mean)(x - mean)^T`` of a set of vectors.

    Mergeable (Chan et al.), so a group's moments are the sum of its layers' moments:
    the streamed covariance behind the PCA basis of the divergence.
    """
    count: int
    mean: np.ndarray  # (d,)
    scatter: np.ndarray  # (d, d)

    @classmethod
    def empty(cls, d: int) -> Moments:
        return cls(0, np.zeros(d), np.zeros((d, d)))

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(axis=0)
        c = x - mean
        return cls(len(x), mean, c.T @ c)

    @classmethod
    def from_sums(cls, count: int, shift: np.ndarray, sums: np.ndarray, products: np.ndarray) -> Moments:
        """From ``sum (x - shift)`` and ``sum (x - shift)(x - shift)^T`` over ``count`` vectors."""
        if count == 0:
            return cls.empty(len(shift))
        delta = sums / count
        scatter = products - count * np.outer(delta, delta)
        return cls(int(count), shift + delta, (scatter + scatter.T) / 2)

    def merge(self, other: Moments) -> Moments:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / n)
        return Moments(n, mean, scatter)

    def __add__(self, other: Moments) -> Moments:
        return self.merge(other)

    def covariance(self) -> np.ndarray:
        return self.scatter / (self.count - 1)


def scatter_eigenvalues(scatter: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric positive semi-definite scatter matrix, descending, round-off negatives as 0."""
    ev = np.linalg.eigvalsh(scatter)[::-1]
    return np.clip(ev, 0.0, None)


def entropy_log10(weights: np.ndarray) -> float:
    """``-sum p log10 p`` with ``p = weights / sum(weights)``, zero weights counting 0."""
    p = weights / weights.sum()
    p = p[p > 0]
    return float(-(p * np.log10(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


# ---------------------------------------------------------------------------- the fast path

def layer_metrics(filters, out_channels: int | None = None, eps: float = SPARSITY_EPS, where: str = "layer"
                  ) -> tuple[dict, Moments]:
    """Every metric of one layer, and the moments of its L-inf-scaled non-sparse filters.

    Returns ``(values, moments)``: ``values`` maps each of :data:`METRIC_NAMES` to a float
    (NaN where undefined) plus ``n_filters``, ``n_nonsparse``, ``absmax`` and ``notes`` (the
    reasons for NaN, ``"; "``-joined). Orthogonality needs ``out_channels`` unless
    ``filters`` is the 4-D weight; without it orthogonality is NaN. NaN/Inf weights raise
    ``ValueError`` naming ``where``.
    """
    if out_channels is None and np.ndim(filters) == 4:
        out_channels = np.shape(filters)[0]
    w = as_filter_matrix(filters, where, check_values=False)  # _blockwise checks the values on the way
    n, d = w.shape
    notes: list[str] = []
    blocks = _blockwise(w, eps, where)
    raw_value, raw_reason = _ve_from_moments(blocks.raw)
    linf_value, linf_reason = _ve_from_moments(blocks.linf, what="non-sparse filter")
    norm_value, norm_reason = _normalized_ve(linf_value, linf_reason, blocks.linf.count, d)
    ortho_reason: str | None
    if out_channels is None:
        ortho, ortho_reason = math.nan, "orthogonality needs out_channels"
    elif blocks.absmax == 0 and n:
        ortho, ortho_reason = math.nan, "orthogonality undefined for an all-zero layer"
    else:
        ortho, ortho_reason = _orthogonality(w, int(out_channels))
    for reason in (raw_reason and f"ve_raw: {raw_reason}", linf_reason and f"ve_linf: {linf_reason}",
                   norm_reason and f"ve_normalized: {norm_reason}", ortho_reason):
        if reason and reason not in notes:
            notes.append(reason)
    values = {
        "sparsity": blocks.sparsity if n else math.nan,
        "ve_raw": raw_value, "ve_linf": linf_value, "ve_normalized": norm_value,
        "orthogonality": ortho, "l1_norm": blocks.l1, "l2_norm": math.sqrt(blocks.l2sq),
        "n_filters": n, "n_nonsparse": blocks.linf.count, "absmax": blocks.absmax, "notes": "; ".join(notes),
    }
    return values, blocks.linf


@dataclass
class _Blocks:
    raw: Moments
    linf: Moments
    sparsity: float
    absmax: float
    l1: float
    l2sq: float


def _blockwise(w: np.ndarray, eps: float, where: str) -> _Blocks:
    """One compiled pass over the layer (see :mod:`filterdb.analysis.layer_sums`): norms,
    per-filter max |w|, and the shifted sums and products of the raw and of the L-inf-scaled
    non-sparse filters, all in float64."""
    n, d = w.shape
    if n == 0:
        return _Blocks(Moments.empty(d), Moments.empty(d), math.nan, 0.0, 0.0, 0.0)
    from filterdb.analysis.layer_sums import layer_sums  # numba: loaded only where metrics are computed
    if w.dtype not in (np.float32, np.float64):
        w = w.astype(np.float64)
    absmax, l1, shift, raw_s, raw_p, n_nonsparse, lin_shift, lin_s, lin_p = layer_sums(np.ascontiguousarray(w), eps)
    if not math.isfinite(l1):
        check_finite(w, where)
    raw = Moments.from_sums(n, shift, raw_s, _symmetric(raw_p))
    linf = Moments.from_sums(n_nonsparse, lin_shift, lin_s, _symmetric(lin_p))
    l2sq = float(np.trace(raw.scatter) + n * raw.mean @ raw.mean)
    return _Blocks(raw, linf, (n - n_nonsparse) / n, float(absmax), float(l1), max(l2sq, 0.0))


def _symmetric(products: np.ndarray) -> np.ndarray:
    """The symmetric matrix of the lower triangle of ``products`` (its upper one is not kept)."""
    lower = np.tril(products)
    return lower + np.tril(lower, -1).T


def _sparse_mask(a: np.ndarray, eps: float) -> np.ndarray:
    top = a.max() if len(a) else 0.0
    if top == 0:
        return np.ones(len(a), dtype=bool)
    return a < eps * top


def _ve_from_moments(m: Moments, what: str = "filter") -> tuple[float, str | None]:
    if len(m.mean) == 1:
        return math.nan, "variance entropy undefined for 1x1 filters (one dimension)"
    if m.count == 0:
        return math.nan, f"no {what}s"
    if m.count == 1:
        return math.nan, f"a single {what} has no variance"
    ev = scatter_eigenvalues(m.scatter)
    if ev.sum() <= 0:
        return 0.0, None  # identical filters: no spread in any direction
    return entropy_log10(ev), None


def _normalized_ve(ve: float, reason: str | None, count: int, d: int) -> tuple[float, str | None]:
    if d != 9:
        return math.nan, "the random-layer fit f(n) is for 3x3 filters only"
    if reason is not None or math.isnan(ve):
        return math.nan, reason
    floor = float(random_entropy_floor(count))
    if floor <= 0:
        return math.nan, f"f(n) = {floor:.4f} <= 0 for n = {count} non-sparse filters"
    return ve / floor, None


def _orthogonality(w: np.ndarray, m: int) -> tuple[float, str | None]:
    n = w.shape[0]
    if m < 1 or n % m:
        raise ValueError(f"{n} filters do not split into {m} output channels")
    if m == 1:
        return math.nan, "orthogonality undefined for a single output channel"
    rows = w.reshape(m, -1)
    if rows.dtype != np.float32 or m * m * rows.shape[1] < _FLOAT32_GRAM_FROM:
        rows = rows.astype(np.float64, copy=False)
    from filterdb.analysis.layer_sums import off_diagonal_cosines
    off, zero_rows = off_diagonal_cosines(rows @ rows.T)
    if zero_rows == m:
        return math.nan, "orthogonality undefined for an all-zero layer"
    return 1.0 - (off + zero_rows) / (m * (m - 1)), None
