"""Sums over many subsets of the models (analysis/subset_sums.py) against the plain products they replace."""
import numpy as np
import pytest

from filterdb.analysis import subset_sums
from filterdb.analysis.subset_sums import PackedCounts, blocked_product


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.uint16])
def test_blocked_product_is_the_plain_product(monkeypatch, dtype):
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 2 if dtype is bool else 9, size=(257, 300)).astype(dtype)
    values = rng.normal(size=(300, 7))
    plain = weights.astype(np.float64) @ values
    assert np.array_equal(blocked_product(weights, values), plain)  # one block
    monkeypatch.setattr(subset_sums, "BLOCK_BYTES", 8 * 300 * 10)  # 10 rows a block, the last one shorter
    np.testing.assert_allclose(blocked_product(weights, values), plain, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(blocked_product(weights, values[:, 0]), plain[:, 0], rtol=1e-12, atol=1e-12)


def test_packed_counts_give_the_exact_integer_sums():
    """Fields packed by their totals' bits give masks @ counts exactly: small and large totals, a
    column of zeros, a column whose total needs 45 bits (alone in its float64), every mask."""
    rng = np.random.default_rng(1)
    counts = rng.poisson(3.0, size=(200, 40)).astype(np.int64)
    counts[:, 5] = 0
    counts[:, 7] = rng.integers(0, 2 ** 37, size=200)
    counts[:, 9] = rng.integers(0, 2 ** 20, size=200)
    masks = rng.random((333, 200)) < 0.5
    masks[0], masks[1] = True, False
    packed = PackedCounts(counts)
    assert packed.n_packed < counts.shape[1] // 3
    sums = packed.masked_sums(masks)
    assert sums.dtype == np.int64
    assert np.array_equal(sums, masks.astype(np.int64) @ counts)
    chosen = np.array([9, 0, 7, 5, 33])  # some columns, in another order
    assert np.array_equal(PackedCounts(counts, chosen).masked_sums(masks, rows=7), masks.astype(np.int64) @ counts[:, chosen])
    bits = [int(t).bit_length() for t in counts.sum(axis=0)]
    for slot in range(packed.n_packed):  # no float64 column holds more than 53 bits of fields
        assert sum(max(1, b) for b, s in zip(bits, packed.slot) if s == slot) <= 53


def test_packed_counts_refuse_what_float64_cannot_sum_exactly():
    with pytest.raises(ValueError, match="2\\*\\*53"):
        PackedCounts(np.array([[2 ** 53], [1]], dtype=np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        PackedCounts(np.array([[1, -1]]))


def test_packed_masks_unpack_to_the_rows_they_pack():
    from filterdb.analysis.subset_sums import PackedMasks
    rng = np.random.default_rng(2)
    masks = rng.random((41, 13)) < 0.5  # 13 models: 3 padding bits in each row's last byte
    packed = PackedMasks(np.packbits(masks, axis=1), 13)
    assert packed.shape == (41, 13) and len(packed) == 41
    assert np.array_equal(packed[:], masks) and np.array_equal(packed[5:9], masks[5:9])
    values = rng.normal(size=(13, 3))
    assert np.array_equal(blocked_product(packed, values), blocked_product(masks, values))
    counts = rng.integers(0, 5, size=(13, 4))
    assert np.array_equal(PackedCounts(counts).masked_sums(packed), masks.astype(np.int64) @ counts)
    with pytest.raises(ValueError, match="13 columns"):
        PackedMasks(np.packbits(masks, axis=1)[:, :1], 13)
