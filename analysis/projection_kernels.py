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
    """``counts[i] += numpy.histogram(p[i], bins=edges)[0]`` for equal-width ``edges``: the bin the
    edges define (``edges[b] <= v < edges[b + 1]``, the last bin closed; values outside
    [edges[0], edges[-1]] dropped), as numpy's rule finds it.

    Two loops per row. The first, which vectorises, guesses ``int((v - lo) * bins / (hi - lo))``
    for every value and marks the values within ``tol`` of a bin edge in that scale (``tol``
    bounds the rounding of the guess and of ``linspace``'s edges, 16x over) or outside the range.
    A guess not marked is the edges' bin. The second counts, in four interleaved histograms
    (consecutive values in one bin do not wait on each other's increment); a marked value (a few
    in a million) gets numpy's correction: clip the guess to the bins, move down one where
    ``v < edges[b]``, up one where ``v >= edges[b + 1]`` (not past the last). The corrections
    read the edges at the value's bin, which on these CPUs is a slow gather when vectorised: the
    previous one-loop kernel spent most of its time there.
    """
    n_bins = len(edges) - 1
    last = n_bins - 1
    lo, hi = edges[0], edges[-1]
    per_width = n_bins / (hi - lo)
    tol = 16.0 * 2.220446049250313e-16 * (n_bins + max(abs(lo), abs(hi)) * per_width)
    if not tol < 0.25:  # bins within a few ulps of their values' size: correct every value
        tol = 2.0
    d, n = p.shape
    guess = np.empty(n, np.int32)
    stride = n_bins + 1
    local = np.zeros(4 * stride, np.int64)
    for i in range(d):
        row = p[i]
        for k in range(n):
            v = row[k]
            c = v if v > lo else lo  # NaN: lo, marked below
            c = c if c < hi else hi
            f = (c - lo) * per_width
            b = np.int32(f)
            r = f - b
            marked = (r < tol) | (r > 1.0 - tol) | (v < lo) | (v > hi)
            guess[k] = np.int32(-1) if marked else b
        local[:] = 0
        for k in range(n):
            b = guess[k]
            if b < 0:
                v = row[k]
                if not (v >= lo and v <= hi):
                    continue
                b = min(max(np.int32((v - lo) * per_width), 0), last)
                if v < edges[b] and b > 0:
                    b -= 1
                if v >= edges[b + 1] and b != last:
                    b += 1
            local[(k & 3) * stride + b] += 1
        for lane in range(4):
            for b in range(n_bins):
                counts[i, b] += local[lane * stride + b]


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
