"""Divergence between two groups of filters, computed in bounded memory.

Definition (DESIGN.md): scale every filter by its L-inf norm and drop the sparse ones
(max |w| below 0.01 x the max |w| of its layer); fit a PCA basis of d = kh*kw components
on both groups together; per component, a 70-bin histogram of the projections over one
shared range, empty bins set to float32 eps, renormalised;

    D = sum_i EVR_i * (KL(p_i || q_i) + KL(q_i || p_i))      (natural log)

with EVR the basis' explained-variance ratio. Histograms are normalised to probabilities
(the bin width cancels, as in ``scipy.stats.entropy`` on density histograms).

Streaming: the basis comes from :class:`~filterdb.analysis.metrics.Moments`, which merge
over layers and chunks (the per-layer moments are cached with the metrics, so the
covariance costs no pass over the filters). The shared range needs no pass either: an
L-inf-scaled filter lies in [-1, 1]^d, so its projection on a unit component v lies in
[-|v|_1, |v|_1]; that exact bound is the range. One pass of histogram accumulation,
chunk by chunk, finishes the job; :class:`Histograms` merge, so chunks or shards can be
counted anywhere (a process pool, a Dask executor) and summed.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from filterdb.analysis.metrics import (SPARSITY_EPS, Moments, as_filter_matrix, linf_scaled_nonsparse,
                                      single_threaded_blas)

N_BINS = 70
EMPTY_BIN = float(np.finfo(np.float32).eps)
_BLOCK = 1 << 16


@dataclass
class PCABasis:
    """Principal components (rows of ``components``, by decreasing variance) of a set of filters."""
    components: np.ndarray  # (d, d)
    explained_variance_ratio: np.ndarray  # (d,)

    @classmethod
    def from_moments(cls, moments: Moments) -> "PCABasis":
        """The basis of the covariance ``scatter / (count - 1)``; EVR all NaN if there is no variance."""
        values, vectors = np.linalg.eigh(moments.scatter)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        total = values.sum()
        evr = values / total if total > 0 else np.full(len(values), math.nan)
        return cls(vectors[:, order].T.copy(), evr)

    @property
    def half_ranges(self) -> np.ndarray:
        """|v|_1 per component: projections of L-inf-scaled filters lie in [-|v|_1, |v|_1]."""
        return np.abs(self.components).sum(axis=1)


class Histograms:
    """Counts of the projections of L-inf-scaled non-sparse filters on a basis, one row per component."""

    def __init__(self, basis: PCABasis, bins: int = N_BINS):
        self.basis = basis
        self.bins = bins
        self.counts = np.zeros((len(basis.components), bins), dtype=np.int64)
        half = basis.half_ranges
        # bin index = floor((projection + half) * bins / (2 half)); folded into the projection
        self._scale = np.where(half > 0, bins / (2 * np.where(half > 0, half, 1)), 0.0)
        self._matrix = (basis.components * self._scale[:, None]).astype(np.float64)
        self._offset = (half * self._scale)[:, None]
        self._base = (np.arange(len(half)) * bins)[:, None]

    @property
    def count(self) -> int:
        """Number of filters counted."""
        return int(self.counts[0].sum()) if len(self.counts) else 0

    def add(self, filters, absmax: float, eps: float = SPARSITY_EPS) -> "Histograms":
        """Count a chunk of filters of one layer whose max |w| is ``absmax`` (sparse ones are dropped)."""
        w = as_filter_matrix(filters, check_values=False)
        with single_threaded_blas():
            for start in range(0, len(w), _BLOCK):
                self._add_block(w[start:start + _BLOCK], eps * absmax)
        return self

    def _add_block(self, w: np.ndarray, threshold: float) -> None:
        # float32 filters are projected in float32 (the projections' round-off, ~1e-7 of the
        # range, is below the filters' own precision); anything else in float64
        dtype = np.float32 if w.dtype == np.float32 else np.float64
        x = np.array(w.T, dtype=dtype, order="C")  # (d, n): reductions over filters run along rows
        a = np.abs(x).max(axis=0)
        keep = a >= threshold
        keep &= a > 0
        if not keep.all():
            x, a = x[:, keep], a[keep]
        if not len(a):
            return
        p = self._matrix.astype(dtype, copy=False) @ x
        p /= a
        p += self._offset.astype(dtype, copy=False)
        idx = p.astype(np.intp)  # truncation: floor for p >= 0, and round-off below 0 lands in bin 0
        np.minimum(idx, self.bins - 1, out=idx)  # the upper bound itself belongs to the last bin
        idx += self._base
        self.counts += np.bincount(idx.ravel(), minlength=self.counts.size).reshape(self.counts.shape)

    def merge(self, other: "Histograms") -> "Histograms":
        self.counts += other.counts
        return self

    def probabilities(self) -> np.ndarray:
        """Per component: counts / total, empty bins set to float32 eps, renormalised."""
        p = self.counts.astype(np.float64)
        total = p.sum(axis=1, keepdims=True)
        p = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
        p[p == 0] = EMPTY_BIN
        return p / p.sum(axis=1, keepdims=True)


def symmetric_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``KL(p||q) + KL(q||p)`` along the last axis, natural log; p and q strictly positive."""
    return ((p - q) * (np.log(p) - np.log(q))).sum(axis=-1)


@dataclass
class Divergence:
    """D and its parts; ``value`` is NaN (with ``reason``) when a group has no non-sparse filter."""
    value: float
    per_component: pd.DataFrame  # component, evr, symmetric_kl, contribution
    n_a: int
    n_b: int
    reason: str = ""


def divergence_from_histograms(hist_a: Histograms, hist_b: Histograms) -> Divergence:
    """D from the two groups' histograms on their shared basis."""
    n_a, n_b = hist_a.count, hist_b.count
    evr = hist_a.basis.explained_variance_ratio
    if n_a == 0 or n_b == 0:
        empty = "first" if n_a == 0 else "second"
        return Divergence(math.nan, _components(evr, np.full(len(evr), math.nan)), n_a, n_b,
                          f"the {empty} group has no non-sparse filters")
    kl = symmetric_kl(hist_a.probabilities(), hist_b.probabilities())
    if np.isnan(evr).all():  # every filter of both groups is the same after scaling
        return Divergence(0.0, _components(evr, kl), n_a, n_b, "no variance: all scaled filters are identical")
    frame = _components(evr, kl)
    return Divergence(float(frame["contribution"].sum()), frame, n_a, n_b)


def _components(evr: np.ndarray, kl: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"component": np.arange(len(evr)), "evr": evr, "symmetric_kl": kl, "contribution": evr * kl})


def divergence(layers_a: Iterable, layers_b: Iterable, eps: float = SPARSITY_EPS, bins: int = N_BINS) -> Divergence:
    """D between two groups given in memory as lists of layers (each an (n, kh, kw) array).

    Sparsity is judged per layer, as in the metrics. For databases, see
    :func:`filterdb.analysis.compare.compare_groups`, which streams.
    """
    layers_a, layers_b = [as_filter_matrix(x, "group A layer") for x in layers_a], \
        [as_filter_matrix(x, "group B layer") for x in layers_b]
    d = {x.shape[1] for x in layers_a + layers_b}
    if len(d) != 1:
        raise ValueError(f"both groups need filters of one kernel size, got sizes {sorted(d)}")
    pooled = Moments.empty(d.pop())
    for x in layers_a + layers_b:
        pooled = pooled + Moments.of(linf_scaled_nonsparse(x, eps))
    basis = PCABasis.from_moments(pooled)
    hist_a, hist_b = Histograms(basis, bins), Histograms(basis, bins)
    for hist, layers in ((hist_a, layers_a), (hist_b, layers_b)):
        for x in layers:
            if len(x):
                hist.add(x, float(np.abs(x).max()), eps)
    return divergence_from_histograms(hist_a, hist_b)
