"""Divergence between two groups of filters, as the robustness paper's authors compute it.

Definition (*Adversarial Robustness through the Lens of Convolutional Filters*, CVPR-W 2022;
followed from the authors' notebook ``pca.ipynb`` in github.com/paulgavrikov/
cvpr22w_RobustnessThroughTheLens, cells ``scale``, ``pca_dict["full"]``, ``dX_trans_range``,
``get_discrete_probability_distribution``, ``kl_sym`` and the per-decile loop):

1. scale every filter x by its L-inf norm, x / max|x| (an all-zero filter stays zero);
2. fit a PCA basis of d = kh*kw components (v_i, explained-variance ratio EVR_i, mean mu) on
   the non-sparse scaled filters of a *reference set* of layers;
3. one scalar range [lo, hi] = (min, max) over every projection (x - mu) . v_i of every scaled
   filter of the reference set, sparse ones included, all components together;
4. per component, each group's non-sparse filters in a 70-bin ``numpy.histogram(...,
   range=(lo, hi), density=True)``; empty bins set to float32 eps *as a density*, then
   renormalised to sum 1: p_i, q_i;
5. D = sum_i EVR_i (KL(p_i || q_i) + KL(q_i || p_i)), natural log.

The reference set is what the variants name (:mod:`filterdb.analysis.basis`): every model
of the database (the authors' choice and the default), a reference group of models, or the
two compared groups' layers (``groups``). The component signs follow the authors'
scikit-learn 0.24 (``svd_flip`` on U: the projection largest in magnitude over the fit
filters is positive); the sign matters, because it moves the shared range.

Streaming: the basis comes from :class:`~filterdb.analysis.metrics.Moments` (cached per
layer with the metrics), the range from one pass (:class:`RangeScan`, which also finds the
signs), the histograms from another (:class:`Histograms`); every accumulator merges, so
chunks, layers and models can be counted anywhere (a process pool, a Dask executor) and
summed. Projections are computed in float64, so that a filter lands in the bin numpy's
histogram puts it in.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from filterdb.analysis.metrics import SPARSITY_EPS, Moments, as_filter_matrix, linf_scaled_nonsparse

N_BINS = 70
EMPTY_BIN = float(np.finfo(np.float32).eps)
_BLOCK = 1 << 16


@dataclass
class PCABasis:
    """Principal components (rows of ``components``, by decreasing variance) of a set of filters.

    ``mean`` is the mean the projections are centred on (zero if not given). The signs of
    :meth:`from_moments` are arbitrary until :meth:`RangeScan.finish` fixes them."""
    components: np.ndarray  # (d, d)
    explained_variance_ratio: np.ndarray  # (d,)
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (d,)

    def __post_init__(self):
        if self.mean.size == 0:
            self.mean = np.zeros(self.components.shape[1])

    @classmethod
    def from_moments(cls, moments: Moments) -> PCABasis:
        """The basis of the covariance ``scatter / (count - 1)``; EVR all NaN if there is no variance."""
        values, vectors = np.linalg.eigh(moments.scatter)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        total = values.sum()
        evr = values / total if total > 0 else np.full(len(values), math.nan)
        return cls(vectors[:, order].T.copy(), evr, np.array(moments.mean, dtype=np.float64))

    def project(self, w: np.ndarray, keep: np.ndarray | None = None, reuse: bool = False) -> np.ndarray:
        """``(x / max|x| - mean) . v_i`` for every row x of ``w`` (all-zero rows: x stays zero), or
        only the rows where ``keep`` is true: (d, n).

        ``reuse``: the result lies in this thread's buffers and is overwritten by the next call
        (for at most :data:`_BLOCK` rows; fresh pages for every block cost more than the sums)."""
        from filterdb.analysis.projection_kernels import centred_linf_scaled  # numba: only where filters are projected

        x = _compiled_dtype(np.asarray(w))
        keep = np.ones(len(x), bool) if keep is None else keep
        n, d = int(np.count_nonzero(keep)), len(self.components)
        if reuse and n <= _BLOCK:
            scaled, projected = _thread_buffers(d)
            scaled, projected = scaled[:n], projected[:d * n].reshape(d, n)
        else:
            scaled, projected = np.empty((n, x.shape[1])), np.empty((d, n))
        centred_linf_scaled(x, self.mean, keep, scaled)
        return np.matmul(self.components, scaled.T, out=projected)


_buffers = threading.local()


def _thread_buffers(d: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's (scaled filters, projections) buffers for blocks of :data:`_BLOCK` filters of size d
    (one size held at a time: 9.4 MB for 3x3)."""
    held = getattr(_buffers, "held", None)
    if held is None or held[0].shape[1] != d:
        held = _buffers.held = (np.empty((_BLOCK, d)), np.empty(d * _BLOCK))
    return held


@dataclass
class DivergenceBasis:
    """A signed PCA basis with its shared histogram range: everything D needs besides the two groups."""
    pca: PCABasis
    lo: float
    hi: float
    n_fit: int  # non-sparse filters the basis was fit on
    n_range: int  # filters (sparse ones included) the range was taken over
    source: str = ""  # which reference set: "database", a group expression, "groups"

    @property
    def edges(self) -> np.ndarray:
        lo, hi = (self.lo, self.hi) if self.hi > self.lo else (self.lo - 0.5, self.hi + 0.5)  # numpy's rule
        return np.linspace(lo, hi, N_BINS + 1)

    def to_json(self) -> dict:
        return {"components": self.pca.components.tolist(), "evr": self.pca.explained_variance_ratio.tolist(),
                "mean": self.pca.mean.tolist(), "lo": self.lo, "hi": self.hi, "n_fit": self.n_fit,
                "n_range": self.n_range, "source": self.source}

    @classmethod
    def from_json(cls, data: dict) -> DivergenceBasis:
        pca = PCABasis(np.array(data["components"], dtype=np.float64), np.array(data["evr"], dtype=np.float64),
                       np.array(data["mean"], dtype=np.float64))
        return cls(pca, float(data["lo"]), float(data["hi"]), int(data["n_fit"]), int(data["n_range"]),
                   data.get("source", ""))


def _nonsparse(w: np.ndarray, absmax: float, eps: float) -> np.ndarray:
    """Per row: not sparse (max |w| >= eps * the layer's max |w|, and not all zero)."""
    from filterdb.analysis.projection_kernels import row_absmax

    a = row_absmax(w) if w.dtype in _COMPILED_DTYPES else np.abs(w).max(axis=1)  # compared in w's dtype
    return (a >= eps * absmax) & (a > 0)


_COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _compiled_dtype(w: np.ndarray) -> np.ndarray:
    """``w`` itself if the kernels take its dtype, else as float64 (exact for float16)."""
    return w if w.dtype in _COMPILED_DTYPES else w.astype(np.float64)


class RangeScan:
    """Per component: min and max of the projections of all scaled filters and of the non-sparse ones."""

    def __init__(self, pca: PCABasis):
        self.pca = pca
        d = len(pca.components)
        self.low_all, self.high_all = np.full(d, np.inf), np.full(d, -np.inf)
        self.low_fit, self.high_fit = np.full(d, np.inf), np.full(d, -np.inf)
        self.n_all = self.n_fit = 0

    def add(self, filters, absmax: float, eps: float = SPARSITY_EPS) -> RangeScan:
        """Scan a chunk of filters of one layer whose max |w| is ``absmax``."""
        from filterdb.analysis.projection_kernels import update_ranges  # numba: only where filters are projected

        w = as_filter_matrix(filters, check_values=False)
        for start in range(0, len(w), _BLOCK):
            block = w[start:start + _BLOCK]
            p = self.pca.project(block, reuse=True)
            keep = _nonsparse(block, absmax, eps) if absmax > 0 else np.zeros(len(block), bool)
            self.n_all += len(block)
            self.n_fit += int(keep.sum())
            update_ranges(p, keep, self.low_all, self.high_all, self.low_fit, self.high_fit)
        return self

    def merge(self, other: RangeScan) -> RangeScan:
        for name in ("low_all", "low_fit"):
            np.minimum(getattr(self, name), getattr(other, name), out=getattr(self, name))
        for name in ("high_all", "high_fit"):
            np.maximum(getattr(self, name), getattr(other, name), out=getattr(self, name))
        self.n_all += other.n_all
        self.n_fit += other.n_fit
        return self

    def finish(self, source: str = "") -> DivergenceBasis:
        """Fix the signs (scikit-learn 0.24's ``svd_flip(U, V)``: the fit projection largest in
        magnitude is positive) and take the scalar range over all components."""
        if self.n_all == 0:
            raise ValueError("no filters to take the divergence range over")
        flip = -self.low_fit > self.high_fit if self.n_fit else np.zeros(len(self.low_fit), bool)
        sign = np.where(flip, -1.0, 1.0)
        low = np.where(flip, -self.high_all, self.low_all)
        high = np.where(flip, -self.low_all, self.high_all)
        pca = PCABasis(self.pca.components * sign[:, None], self.pca.explained_variance_ratio, self.pca.mean)
        return DivergenceBasis(pca, float(low.min()), float(high.max()), self.n_fit, self.n_all, source)


class Histograms:
    """Bin counts of the projections of the non-sparse scaled filters on a basis, one row per component."""

    def __init__(self, basis: DivergenceBasis, bins: int = N_BINS):
        if bins != N_BINS:
            raise ValueError(f"the divergence uses {N_BINS} bins")
        self.basis = basis
        self.counts = np.zeros((len(basis.pca.components), N_BINS), dtype=np.int64)
        self._edges = basis.edges

    @property
    def count(self) -> int:
        """Number of filters counted."""
        return int(self.counts[0].sum()) if len(self.counts) else 0

    def add(self, filters, absmax: float, eps: float = SPARSITY_EPS) -> Histograms:
        """Count a chunk of filters of one layer whose max |w| is ``absmax`` (sparse ones are dropped)."""
        from filterdb.analysis.projection_kernels import add_bin_counts  # numpy.histogram's binning

        w = as_filter_matrix(filters, check_values=False)
        if absmax <= 0:
            return self
        for start in range(0, len(w), _BLOCK):
            block = w[start:start + _BLOCK]
            keep = _nonsparse(block, absmax, eps)
            if keep.any():
                add_bin_counts(self.basis.pca.project(block, keep, reuse=True), self._edges, self.counts)
        return self

    def merge(self, other: Histograms) -> Histograms:
        self.counts += other.counts
        return self

    def probabilities(self) -> np.ndarray:
        """Per component: the density histogram, empty bins set to float32 eps, renormalised to sum 1."""
        return densities_to_probabilities(self.counts, self.basis.edges)


def densities_to_probabilities(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``density=True`` histograms (count / (n * bin width)), zeros set to float32 eps, each row summed to 1."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    density = np.divide(counts, total * np.diff(edges), out=np.zeros_like(counts), where=total > 0)
    density[density == 0] = EMPTY_BIN
    return density / density.sum(axis=-1, keepdims=True)


def symmetric_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``KL(p||q) + KL(q||p)`` along the last axis, natural log; p and q strictly positive."""
    return ((p - q) * (np.log(p) - np.log(q))).sum(axis=-1)


class SplitDivergences:
    """D of many splits of one set of bin counts into two groups, as :func:`divergence_from_counts`
    computes it for each split (the same formula; sums in another order, so equal to ~1e-15 relative).

    ``total`` (d, bins): the counts of both groups together. A split is given by group A's counts;
    group B holds the rest. Bins empty in ``total`` are empty in every split: their density is
    EMPTY_BIN in both groups, so they are left out of the arithmetic (and of the matrix product that
    sums each split's counts: :attr:`columns`) and their share of each KL is added in closed form,
    n_empty * (e_a - e_b) * (ln e_a - ln e_b) with e = EMPTY_BIN / (sum of the group's densities).
    """

    def __init__(self, total: np.ndarray, edges: np.ndarray, evr: np.ndarray):
        total = np.asarray(total, dtype=np.float64)
        d, bins = total.shape
        occupied = total > 0
        occupied[~occupied.any(axis=1), 0] = True  # a component with no count at all keeps one (empty) bin
        self.columns = np.flatnonzero(occupied.ravel())  # into the (d * bins) flattened counts
        self.component = self.columns // bins
        self.starts = np.searchsorted(self.component, np.arange(d))
        self.n_empty = bins - occupied.sum(axis=1)
        self.total = total.ravel()[self.columns]
        self.component_total = total.sum(axis=1)
        self.widths = np.diff(np.asarray(edges, dtype=np.float64))[self.columns % bins]
        evr = np.asarray(evr, dtype=np.float64)
        self.evr = np.zeros_like(evr) if np.isnan(evr).all() else evr  # no variance: D = 0 for every split

    def __call__(self, in_a: np.ndarray, rows: int = 64) -> np.ndarray:
        """D of each split: ``in_a`` (K, len(columns)) holds group A's counts in :attr:`columns`. A split
        that leaves a group without filters gives -inf (no null value is that extreme). Worked in chunks
        of ``rows`` splits, whose temporaries stay in the CPU's cache."""
        out = np.empty(len(in_a))
        with np.errstate(divide="ignore", invalid="ignore"):
            for lo in range(0, len(in_a), rows):
                a = in_a[lo:lo + rows].astype(np.float64)
                b = self.total - a
                sum_a = np.add.reduceat(a, self.starts, axis=1)
                sum_b = self.component_total - sum_a
                p, empty_p = self._probabilities(a, sum_a)
                q, empty_q = self._probabilities(b, sum_b)
                np.log(p, out=a)
                np.log(q, out=b)
                a -= b
                p -= q
                p *= a
                kl = np.add.reduceat(p, self.starts, axis=1)
                kl += self.n_empty * (empty_p - empty_q) * (np.log(empty_p) - np.log(empty_q))
                value = kl @ self.evr
                value[(sum_a[:, 0] == 0) | (sum_b[:, 0] == 0)] = -np.inf
                out[lo:lo + rows] = value
        return out

    def _probabilities(self, counts: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`densities_to_probabilities` of the occupied bins, and the probability of each
        component's empty bins."""
        density = counts / (sums[:, self.component] * self.widths)
        density[counts == 0] = EMPTY_BIN
        norm = np.add.reduceat(density, self.starts, axis=1) + self.n_empty * EMPTY_BIN
        density /= norm[:, self.component]
        return density, EMPTY_BIN / norm


@dataclass
class Divergence:
    """D and its parts; ``value`` is NaN (with ``reason``) when a group has no non-sparse filter."""
    value: float
    per_component: pd.DataFrame  # component, evr, symmetric_kl, contribution
    n_a: int
    n_b: int
    reason: str = ""


def divergence_from_counts(basis: DivergenceBasis, counts_a: np.ndarray, counts_b: np.ndarray) -> Divergence:
    """D from two groups' bin counts (components x bins) on one basis."""
    n_a, n_b = int(counts_a[0].sum()), int(counts_b[0].sum())
    evr = basis.pca.explained_variance_ratio
    if n_a == 0 or n_b == 0:
        empty = "first" if n_a == 0 else "second"
        return Divergence(math.nan, _components(evr, np.full(len(evr), math.nan)), n_a, n_b,
                          f"the {empty} group has no non-sparse filters")
    edges = basis.edges
    kl = symmetric_kl(densities_to_probabilities(counts_a, edges), densities_to_probabilities(counts_b, edges))
    if np.isnan(evr).all():  # every scaled filter of the reference set is the same
        return Divergence(0.0, _components(evr, kl), n_a, n_b, "no variance: all scaled filters are identical")
    frame = _components(evr, kl)
    return Divergence(float(frame["contribution"].sum()), frame, n_a, n_b)


def divergence_from_histograms(hist_a: Histograms, hist_b: Histograms) -> Divergence:
    """D from the two groups' histograms on their shared basis."""
    return divergence_from_counts(hist_a.basis, hist_a.counts, hist_b.counts)


def _components(evr: np.ndarray, kl: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"component": np.arange(len(evr)), "evr": evr, "symmetric_kl": kl, "contribution": evr * kl})


def fit_basis(layers: Iterable, eps: float = SPARSITY_EPS, source: str = "") -> DivergenceBasis:
    """The signed basis and range of a reference set given in memory as layers ((n, kh, kw) arrays)."""
    layers = [as_filter_matrix(x, "reference layer") for x in layers]
    d = {x.shape[1] for x in layers}
    if len(d) != 1:
        raise ValueError(f"the divergence needs filters of one kernel size, got sizes {sorted(d)}")
    pooled = Moments.empty(d.pop())
    for x in layers:
        pooled = pooled + Moments.of(linf_scaled_nonsparse(x, eps))
    scan = RangeScan(PCABasis.from_moments(pooled))
    for x in layers:
        if len(x):
            scan.add(x, float(np.abs(x).max()), eps)
    return scan.finish(source)


def divergence(layers_a: Iterable, layers_b: Iterable, basis: DivergenceBasis | None = None,
               eps: float = SPARSITY_EPS) -> Divergence:
    """D between two groups given in memory as lists of layers (each an (n, kh, kw) array).

    ``basis``: a reference basis (e.g. :func:`filterdb.analysis.basis.database_basis`);
    without it, the ``groups`` variant: basis and range from the two groups' layers.
    Sparsity is judged per layer, as in the metrics. For databases, see
    :func:`filterdb.analysis.compare.compare_groups`, which streams.
    """
    layers_a = [as_filter_matrix(x, "group A layer") for x in layers_a]
    layers_b = [as_filter_matrix(x, "group B layer") for x in layers_b]
    d = {x.shape[1] for x in layers_a + layers_b}
    if len(d) != 1:
        raise ValueError(f"both groups need filters of one kernel size, got sizes {sorted(d)}")
    if basis is None:
        basis = fit_basis(layers_a + layers_b, eps, "groups")
    hist_a, hist_b = Histograms(basis), Histograms(basis)
    for hist, layers in ((hist_a, layers_a), (hist_b, layers_b)):
        for x in layers:
            if len(x):
                hist.add(x, float(np.abs(x).max()), eps)
    return divergence_from_histograms(hist_a, hist_b)
