"""Sums of many subsets of the same rows: ``masks @ values`` for the permutation nulls (a row of
``masks`` is one labeling of the models) and ``counts @ values`` for the bootstrap (a row of
``counts`` says how often each model was drawn).

Both products stream the integer matrix through one float64 buffer of :data:`BLOCK_BYTES`
(a fresh array per block would fault in new pages: at 10,000 models 3-4x the product itself,
docs/benchmarks.md) and multiply it at BLAS speed.

Integer counts (the divergence's per-model histogram bins) go through :class:`PackedCounts`:
several bins share one float64 column, each in a field of bits wide enough for its total over
every model, so that one product sums them all exactly.
"""
from __future__ import annotations

import numpy as np

BLOCK_BYTES = 8 << 20  # the float64 buffer: a block of rows that stays in the CPU's last-level cache
FLOAT64_INTEGER_BITS = 53  # every integer below 2**53 is a float64, and so is every sum that stays below it


class PackedMasks:
    """Boolean (K, n) rows kept bit-packed (``np.packbits(masks, axis=1)``: a byte holds 8 models,
    the first in its high bit); ``masks[lo:hi]`` unpacks a block of rows."""

    def __init__(self, packed: np.ndarray, n: int):
        if packed.ndim != 2 or packed.dtype != np.uint8 or packed.shape[1] != (n + 7) // 8:
            raise ValueError(f"packed masks of {n} columns need (K, {(n + 7) // 8}) bytes, got {packed.dtype} "
                             f"{packed.shape}")
        self.packed, self.shape = packed, (len(packed), n)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.unpackbits(self.packed[rows], axis=1, count=self.shape[1]).view(bool)


def blocked_product(weights: np.ndarray | PackedMasks, values: np.ndarray) -> np.ndarray:
    """``weights @ values`` in float64 for an integer or boolean ``weights`` (K, n) (or bit-packed
    :class:`PackedMasks`) and ``values`` (n,) or (n, m): the same numbers as
    ``weights.astype(np.float64) @ values``, in row blocks copied into one reused buffer."""
    values = np.asarray(values, dtype=np.float64)
    k, n = weights.shape
    out = np.empty((k, *values.shape[1:]))
    rows = max(1, min(k, BLOCK_BYTES // (8 * max(n, 1))))
    buffer = np.empty((rows, n))
    for lo in range(0, k, rows):
        block = buffer[:min(rows, k - lo)]
        np.copyto(block, weights[lo:lo + rows], casting="unsafe")
        np.matmul(block, values, out=out[lo:lo + len(block)])
    return out


class PackedCounts:
    """Non-negative integer counts (n, c) packed several columns to a float64 column, so that
    ``masks @ counts`` costs a product over fewer columns and stays exact.

    Column j's sum over any subset of the rows is at most its total t_j, which fits in
    b_j = bit_length(t_j) bits. Columns are packed first-fit by decreasing b_j into float64 columns
    of at most 53 bits: packed[:, s] = sum_j counts[:, j] * 2**o_j over the columns j in s at bit
    offsets o_j. Every partial sum of a product with a 0/1 mask is an integer below 2**53, so exact
    in float64 in any order; a field is read back as (sum >> o_j) & (2**b_j - 1).

    >>> counts = np.array([[3, 0, 1], [1, 2, 1]])
    >>> packed = PackedCounts(counts)
    >>> packed.n_packed  # totals 4, 2, 2: 3 + 2 + 2 bits in one float64 column
    1
    >>> packed.masked_sums(np.array([[True, False], [True, True]]))
    array([[3, 0, 1],
           [4, 2, 2]])
    """

    def __init__(self, counts: np.ndarray, columns: np.ndarray | None = None):
        """``counts`` (n, c), or (n, any) and the ``columns`` of it to pack, in that order."""
        counts = np.asarray(counts)
        if counts.ndim != 2 or (counts.size and counts.min() < 0):
            raise ValueError("PackedCounts needs a 2-D matrix of non-negative integer counts")
        columns = np.arange(counts.shape[1]) if columns is None else np.asarray(columns)
        totals = counts.sum(axis=0, dtype=np.int64)[columns]
        bits = np.maximum(1, [int(t).bit_length() for t in totals]).astype(np.int64)
        if bits.size and bits.max() > FLOAT64_INTEGER_BITS:
            raise ValueError(f"a column totals {int(totals.max())}, beyond the 2**53 that float64 sums exactly")
        used: list[int] = []  # bits taken in each packed column
        self.slot = np.empty(len(bits), np.int64)  # the packed column of each count column
        self.offset = np.empty(len(bits), np.int64)
        for j in np.argsort(-bits, kind="stable"):
            s = next((s for s, taken in enumerate(used) if taken + bits[j] <= FLOAT64_INTEGER_BITS), len(used))
            if s == len(used):
                used.append(0)
            self.slot[j], self.offset[j] = s, used[s]
            used[s] += int(bits[j])
        self.field = (np.int64(1) << bits) - 1
        self.n_packed = len(used)
        self.packed = np.zeros((counts.shape[0], self.n_packed))
        for j, column in enumerate(columns):  # exact: every packed value is an integer below 2**53
            self.packed[:, self.slot[j]] += counts[:, column] * float(2 ** int(self.offset[j]))

    def masked_sums(self, masks: np.ndarray | PackedMasks, rows: int = 256) -> np.ndarray:
        """``masks @ counts`` for a boolean (K, n) ``masks``, as int64 (K, c): exactly the integer sums
        (the fields read back ``rows`` at a time, so that their temporaries stay in the CPU's cache)."""
        sums = blocked_product(masks, self.packed)
        out = np.empty((len(sums), len(self.slot)), np.int64)
        for lo in range(0, len(sums), rows):
            block = out[lo:lo + rows]
            np.take(sums[lo:lo + rows].astype(np.int64), self.slot, axis=1, out=block)
            block >>= self.offset
            block &= self.field
        return out
