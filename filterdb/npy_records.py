"""Named arrays in one file, as consecutive ``.npy`` records: the names first, then each array.

What the analysis caches (kept seeded draws, per-layer histograms) write. ``np.savez`` would
do, but ``np.load`` reads an ``.npz`` through zipfile, a CRC and a copy: 0.05-0.07 s of CPU for
the 100 MB of 10,000 bootstrap resamples of 2 x 5,000 models, against 0.012-0.018 s read straight
into the arrays (a fresh process each; docs/benchmarks.md). The
files carry their own digest (:func:`filterdb.integrity.arrays_digest`) where it matters.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import BinaryIO

import numpy as np
import numpy.typing as npt


def write(out: BinaryIO, arrays: Mapping[str, npt.ArrayLike]) -> None:
    """Write ``arrays`` to an open binary file (object arrays are refused: they would need pickle)."""
    np.save(out, np.array(list(arrays), dtype=str), allow_pickle=False)
    for value in arrays.values():
        np.save(out, np.asarray(value), allow_pickle=False)


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a file :func:`write` wrote; OSError, ValueError or EOFError where it is damaged or cut short."""
    with open(path, "rb") as stored:
        names = np.load(stored, allow_pickle=False)
        return {str(name): np.load(stored, allow_pickle=False) for name in names}
