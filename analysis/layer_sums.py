"""The sums behind :func:`filterdb.analysis.metrics.layer_metrics`, in one compiled pass.

One pass over a layer's ``(n, d)`` filters, in blocks of :data:`BLOCK` that stay in the
CPU cache, gives every filter's max |w|, the layer's sum |w|, and the shifted sums
``sum (x - s)`` and products ``sum (x - s)(x - s)^T`` of the raw filters and of the
L-inf-scaled ones ``x / max|x|`` (all-zero filters left out). Each block is first copied
transposed (one filter per column, in float64); every later step then runs along the
filters, which the compiler vectorises: per-filter max |x| and sum |x|, the scaled and
shifted columns, the products. The sparse filters (``0 < max|x| < eps * the layer's
max |w|``, known only at the end; the pass keeps the smallest non-zero max |x| to tell
whether there are any) are then taken out of the scaled sums, or, where they are most of
the layer, the non-sparse ones summed afresh.

Everything is float64: float32 weights convert exactly and their products are exact, so
the only round-off is that of float64 sums (within a block, then over blocks). The shifts
s, s' are the means of the first block, summed about its first filter so that identical
filters give exactly s = x and zero scatter; they keep the products free of cancellation.
The elementwise arithmetic is that of the definitions (no fused multiply-add, no
fast-math); only the sums of products are reassociated and fused (one rounding per
multiply-add), which lets the compiler vectorise them.

Compiled with numba on first use and cached on disk; imported only where metrics are
computed, never on the read path.
"""
from __future__ import annotations

import numpy as np
from numba import njit

BLOCK = 128  # filters per block: two d x 128 float64 buffers, 19 KiB for 3x3 (256 would not fit a 32 KiB L1)
_PAD = 8  # buffer rows of BLOCK + _PAD doubles: rows a power of two apart would share L1 cache sets
_TILE = 3  # products are summed in 3 x 3 tiles: 9 accumulators and 6 loads per step


@njit(cache=True, fastmath={"reassoc", "contract"}, nogil=True)  # sums only: reordered, fused multiply-adds
def _add_sums(x, k, sums, products):
    """``sums += x[:, :k].sum(1)`` and ``products += x[:, :k] @ x[:, :k].T`` on and below the diagonal."""
    d = x.shape[0]
    for j in range(d):
        s = 0.0
        for i in range(k):
            s += x[j, i]
        sums[j] += s
    for j0 in range(0, d, _TILE):
        for l0 in range(0, j0 + 1, _TILE):
            if j0 + _TILE > d:  # the last rows when d is not a multiple of the tile
                for j in range(j0, d):
                    for m in range(l0, min(j + 1, l0 + _TILE)):
                        p = 0.0
                        for i in range(k):
                            p += x[j, i] * x[m, i]
                        products[j, m] += p
            elif l0 == j0:  # a tile on the diagonal: its lower triangle, 6 accumulators
                p00 = p10 = p11 = p20 = p21 = p22 = 0.0
                for i in range(k):
                    a0, a1, a2 = x[j0, i], x[j0 + 1, i], x[j0 + 2, i]
                    p00 += a0 * a0
                    p10 += a1 * a0
                    p11 += a1 * a1
                    p20 += a2 * a0
                    p21 += a2 * a1
                    p22 += a2 * a2
                products[j0, j0] += p00
                products[j0 + 1, j0] += p10
                products[j0 + 1, j0 + 1] += p11
                products[j0 + 2, j0] += p20
                products[j0 + 2, j0 + 1] += p21
                products[j0 + 2, j0 + 2] += p22
            else:
                p00 = p01 = p02 = p10 = p11 = p12 = p20 = p21 = p22 = 0.0
                for i in range(k):
                    a0, a1, a2 = x[j0, i], x[j0 + 1, i], x[j0 + 2, i]
                    b0, b1, b2 = x[l0, i], x[l0 + 1, i], x[l0 + 2, i]
                    p00 += a0 * b0
                    p01 += a0 * b1
                    p02 += a0 * b2
                    p10 += a1 * b0
                    p11 += a1 * b1
                    p12 += a1 * b2
                    p20 += a2 * b0
                    p21 += a2 * b1
                    p22 += a2 * b2
                products[j0, l0] += p00
                products[j0, l0 + 1] += p01
                products[j0, l0 + 2] += p02
                products[j0 + 1, l0] += p10
                products[j0 + 1, l0 + 1] += p11
                products[j0 + 1, l0 + 2] += p12
                products[j0 + 2, l0] += p20
                products[j0 + 2, l0 + 1] += p21
                products[j0 + 2, l0 + 2] += p22


@njit(inline="always")
def _sum_blocks(w, d, shift, lin_shift, a, raw_sums, raw_products, lin_sums, lin_products):
    """The pass: fills ``a``, adds to the raw and the scaled sums; returns sum |w|, the number of non-zero
    filters, the largest max |x| and the smallest non-zero one (inf if none)."""
    n = w.shape[0]
    x = np.empty((d, BLOCK + _PAD))  # a block of filters, then of raw filters - shift
    lin = np.empty((d, BLOCK + _PAD))
    l1 = np.zeros(BLOCK)  # per column of the block: sums, maxima and minima over the blocks
    top = np.zeros(BLOCK)
    low = np.full(BLOCK, np.inf)
    n_nonzero = 0
    for lo in range(0, n, BLOCK):
        k = min(BLOCK, n - lo)
        for i in range(k):
            for j in range(d):
                x[j, i] = np.float64(w[lo + i, j])
        for i in range(k):
            peak, row_l1 = 0.0, 0.0
            for j in range(d):
                v = abs(x[j, i])
                row_l1 += v
                peak = max(peak, v)
            a[lo + i] = peak
            l1[i] += row_l1
            top[i] = max(top[i], peak)
            nonzero = peak > 0.0
            n_nonzero += nonzero
            low[i] = min(low[i], peak if nonzero else np.inf)
            inv = 1.0 / peak if nonzero else 0.0  # an all-zero filter: its scaled column stays zero
            one = 1.0 if nonzero else 0.0
            for j in range(d):
                lin[j, i] = x[j, i] * inv - lin_shift[j] * one
                x[j, i] -= shift[j]
        _add_sums(x, k, raw_sums, raw_products)
        _add_sums(lin, k, lin_sums, lin_products)
    return l1.sum(), n_nonzero, top.max(), low.min()


@njit(cache=True, nogil=True)
def _scaled_mean(w, rows, d):
    """Mean of the first ``rows`` filters with max |w| > 0, each scaled by it, summed about the first."""
    mean = np.zeros(d)
    origin = np.zeros(d)
    count = 0
    for i in range(rows):
        peak = 0.0
        for j in range(d):
            peak = max(peak, abs(np.float64(w[i, j])))
        if peak > 0.0:
            inv = 1.0 / peak
            for j in range(d):
                u = np.float64(w[i, j]) * inv
                if count == 0:
                    origin[j] = u
                else:
                    mean[j] += u - origin[j]
            count += 1
    if count:
        for j in range(d):
            mean[j] = origin[j] + mean[j] / count
    return mean


@njit(cache=True, nogil=True)
def _scaled_sums_where(w, a, lo_a, hi_a, shift, x, sums, products):
    """Sums and products of ``x / max|x| - shift`` over the filters with ``lo_a <= max|x| < hi_a``."""
    n, d = w.shape
    fill, count = 0, 0
    for i in range(n):
        if a[i] < lo_a or a[i] >= hi_a:
            continue
        inv = 1.0 / a[i]
        for j in range(d):
            x[j, fill] = np.float64(w[i, j]) * inv - shift[j]
        fill += 1
        count += 1
        if fill == BLOCK:
            _add_sums(x, fill, sums, products)
            fill = 0
    if fill:
        _add_sums(x, fill, sums, products)
    return count


@njit(cache=True, nogil=True, error_model="numpy")  # divisions without a zero check: they vectorise
def layer_sums(w, eps):
    """The pass over the C-contiguous ``(n, d)`` float32/float64 filters ``w`` (n >= 1).

    Returns ``(absmax, l1, shift, raw_sums, raw_products, n_nonsparse, lin_shift, lin_sums,
    lin_products)``; only the lower triangles of the products hold them. A NaN or Inf weight makes
    ``l1`` non-finite (the caller raises).
    """
    n, d = w.shape
    a = np.empty(n)
    first = min(n, BLOCK)
    shift = np.zeros(d)
    for i in range(1, first):
        for j in range(d):
            shift[j] += np.float64(w[i, j]) - np.float64(w[0, j])
    for j in range(d):
        shift[j] = np.float64(w[0, j]) + shift[j] / first
    lin_shift = _scaled_mean(w, first, d)

    raw_sums, raw_products = np.zeros(d), np.zeros((d, d))
    lin_sums, lin_products = np.zeros(d), np.zeros((d, d))
    if d == 9:  # 3x3, the papers' kernel: a constant d lets the compiler unroll the loops over it
        l1, n_nonzero, absmax, low = _sum_blocks(w, 9, shift, lin_shift, a, raw_sums, raw_products, lin_sums,
                                                 lin_products)
    else:
        l1, n_nonzero, absmax, low = _sum_blocks(w, d, shift, lin_shift, a, raw_sums, raw_products, lin_sums,
                                                 lin_products)

    if not absmax > 0.0:  # every filter zero (or NaN weights): no non-sparse filters
        return absmax, l1, shift, raw_sums, raw_products, 0, lin_shift, np.zeros(d), np.zeros((d, d))
    threshold = eps * absmax
    if threshold == 0.0:  # eps = 0: nothing is sparse, and all-zero filters count, scaled to zero
        n_zero = n - n_nonzero
        for j in range(d):
            lin_sums[j] -= n_zero * lin_shift[j]
            for m in range(d):
                lin_products[j, m] += n_zero * lin_shift[j] * lin_shift[m]
        return absmax, l1, shift, raw_sums, raw_products, n, lin_shift, lin_sums, lin_products
    sparse_sums, sparse_products = np.zeros(d), np.zeros((d, d))
    lin = np.empty((d, BLOCK))
    n_sparse = _scaled_sums_where(w, a, np.nextafter(0.0, 1.0), threshold, lin_shift, lin, sparse_sums,
                                  sparse_products) if low < threshold else 0
    if 2 * n_sparse <= n_nonzero:  # take the few sparse filters out
        return (absmax, l1, shift, raw_sums, raw_products, n_nonzero - n_sparse, lin_shift,
                lin_sums - sparse_sums, lin_products - sparse_products)
    lin_sums[:] = 0.0
    lin_products[:] = 0.0
    count = _scaled_sums_where(w, a, threshold, np.inf, lin_shift, lin, lin_sums, lin_products)
    return absmax, l1, shift, raw_sums, raw_products, count, lin_shift, lin_sums, lin_products



@njit(cache=True, fastmath={"reassoc"}, nogil=True)  # the sums only: reordered; no fused multiply-adds
def off_diagonal_cosines(gram):
    """``sum_{i != j} |G_ij| inv_i inv_j`` of the Gram matrix ``G = R R^T`` of a layer's rows, with
    ``inv_i = 1 / sqrt(G_ii)`` (0 for a zero row) in G's dtype, and the number of zero rows.

    Each term is rounded as numpy's ``abs(G) * inv[:, None] * inv[None, :]`` in G's dtype rounds
    it; the terms are summed in float64, both triangles, in one pass over G (no temporaries).
    """
    m = gram.shape[0]
    inv = np.zeros(m, gram.dtype)
    zero_rows = 0
    for i in range(m):
        sq = np.float64(gram[i, i])
        if sq > 0.0:
            inv[i] = 1.0 / np.sqrt(sq)
        else:
            zero_rows += 1
    total = 0.0
    for i in range(m):
        row = gram[i]
        scale = inv[i]
        s = 0.0
        for j in range(i):
            s += np.float64(abs(row[j]) * scale * inv[j])
        for j in range(i + 1, m):
            s += np.float64(abs(row[j]) * scale * inv[j])
        total += s
    return total, zero_rows
