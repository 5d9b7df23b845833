"""The elementwise steps of the divergence's projections, ranges and histograms, compiled.

:meth:`~filterdb.analysis.divergence.PCABasis.project`, :class:`~filterdb.analysis.divergence.RangeScan`
and :class:`~filterdb.analysis.divergence.Histograms` did these with numpy, one temporary
array per operation (five for the scaling, six for the binning); here each is one pass
over the rows. They do the same IEEE arithmetic in the same order (float32 -> float64
is exact; one correctly rounded division and subtraction per element; no fast-math), so
the results are bit for bit numpy's, and the projections themselves stay one BLAS product
(which rounds by shape: the same as numpy's product of the same block).

Compiled with numba on first use and cached on disk; imported only where filters are
projected, never on the read path.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def row_absmax(w):
    """``np.abs(w).max(axis=1)`` of a 2-D array of finite values (exactly: no arithmetic; NaN is not
    propagated, but stored filters are finite), 25x faster than numpy on rows of 9."""
    n, d = w.shape
    out = np.zeros(n, w.dtype)
    if d == 0:
        return out
    for i in range(n):
        m = abs(w[i, 0])
        for j in range(1, d):
            v = abs(w[i, j])
            if v > m:
                m = v
        out[i] = m
    return out


@njit(cache=True, nogil=True)
def centred_linf_scaled(w, mean, keep, out):
    """``out[:m] = x / max|x| - mean`` in float64 for the rows x of ``w`` where ``keep`` is true
    (m of them, in order; an all-zero row divided by 1).

    numpy: ``x = w[keep].astype(float64); a = abs(x).max(1); x / where(a > 0, a, 1)[:, None] - mean``.
    """
    n, d = w.shape
    m = 0
    for i in range(n):
        if not keep[i]:
            continue
        a = 0.0
        for j in range(d):
            v = abs(np.float64(w[i, j]))
            if v > a:
                a = v
        if a == 0.0:
            a = 1.0
        for j in range(d):
            out[m, j] = np.float64(w[i, j]) / a - mean[j]
        m += 1


@njit(cache=True, nogil=True)
def add_bin_counts(p, edges, counts):
    """``counts[i] += numpy.histogram(p[i], bins=edges)[0]`` for equal-width ``edges``.

    numpy's rule for equal bins: values outside [edges[0], edges[-1]] are dropped; a first
    guess ``int((v - lo) / (hi - lo) * bins)``, clipped to the last bin, then moved down one
    where ``v < edges[bin]`` and up one where ``v >= edges[bin + 1]`` (not past the last).
    Any guess within one bin of the true one ends in the bin the edges define
    (``edges[b] <= v < edges[b + 1]``, the last bin closed), so the guess here multiplies by
    ``bins / (hi - lo)`` instead of dividing (a few ulps apart; a division per value was
    most of the time).
    """
    n_bins = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    per_width = n_bins / (hi - lo)
    for i in range(p.shape[0]):
        for k in range(p.shape[1]):
            v = p[i, k]
            if not (v >= lo and v <= hi):
                continue
            b = int((v - lo) * per_width)
            b = min(max(b, 0), n_bins - 1)
            if v < edges[b] and b > 0:
                b -= 1
            if v >= edges[b + 1] and b != n_bins - 1:
                b += 1
            counts[i, b] += 1


@njit(cache=True, nogil=True)
def update_ranges(p, keep, low_all, high_all, low_fit, high_fit):
    """Per row i of ``p``: ``low_all[i] = min(low_all[i], p[i].min())`` and likewise the max, and
    the same over the columns where ``keep`` is true into ``low_fit``, ``high_fit`` (no arithmetic)."""
    for i in range(p.shape[0]):
        lo_a, hi_a, lo_f, hi_f = low_all[i], high_all[i], low_fit[i], high_fit[i]
        for k in range(p.shape[1]):
            v = p[i, k]
            lo_a = min(lo_a, v)
            hi_a = max(hi_a, v)
            if keep[k]:
                lo_f = min(lo_f, v)
                hi_f = max(hi_f, v)
        low_all[i], high_all[i], low_fit[i], high_fit[i] = lo_a, hi_a, lo_f, hi_f
