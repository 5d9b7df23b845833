"""Seeded random draws kept on disk: the label shuffles of the permutation nulls and the bootstrap
resamples of a comparison depend only on the group sizes, their count and the seed, never on the
data, and drawing them costs more than reading them back (9,999 shuffles of 1,000 models: ~0.15 s
to draw, ~0.01 s to read; 2 x 10,000 bootstrap resamples of 500 models: ~0.05 s against ~0.01 s).

A kept draw is one file of :mod:`filterdb.npy_records` in ``$FILTERDB_HOME/cache/<kind>/``,
named by its key (which includes numpy's version: the generator's stream may change with it)
and holding the arrays and an xxh3 digest of their bytes. A file that does not match its digest, or whose arrays
the caller's check rejects, is drawn again; a read-only or full home draws every time. The folder
is kept under :data:`KEPT_BYTES`: writing a file removes the oldest ones beyond it. Reading a kept
file writes nothing (not even its mtime): a read is free of side effects (docs/integrity.md).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from filterdb import npy_records

KEPT_BYTES = 512 << 20  # per kind of draw
SUFFIX = ".draws"


def folder(kind: str) -> Path:
    from filterdb.paths import home

    return home() / "cache" / kind


def kept(kind: str, key: str, draw: Callable[[], dict[str, np.ndarray]],
         valid: Callable[[dict[str, np.ndarray]], bool]) -> dict[str, np.ndarray]:
    """The arrays ``draw()`` gives for ``key``, read from its kept file when that file is whole and
    ``valid`` accepts it, else drawn and kept."""
    from filterdb.atomic import atomic_path
    from filterdb.integrity import arrays_digest

    path = folder(kind) / f"{key}-numpy{np.__version__}{SUFFIX}"
    try:
        arrays, recorded = read(path)
        if arrays_digest(arrays) == recorded and valid(arrays):
            return arrays
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        pass
    arrays = draw()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as out:  # a failed write leaves no temporary file
            npy_records.write(out, {**arrays, "digest": np.uint64(arrays_digest(arrays))})
        _prune(path.parent, keep=path)
    except OSError:  # a read-only or full home: drawn each time
        pass
    return arrays


def read(path: Path) -> tuple[dict[str, np.ndarray], int]:
    """The arrays of a kept file and the digest it records of them."""
    arrays = npy_records.read(path)
    return arrays, int(arrays.pop("digest"))


def _prune(where: Path, keep: Path) -> None:
    """Remove the oldest kept files (by the time they were written) until the folder holds at most KEPT_BYTES."""
    files = []
    for entry in os.scandir(where):
        if entry.name.endswith((SUFFIX, ".npz")) and entry.is_file():  # .npz: what earlier versions kept
            st = entry.stat()
            files.append((st.st_mtime_ns, st.st_size, entry.path))
    total = sum(size for _, size, _ in files)
    for _, size, name in sorted(files):
        if total <= KEPT_BYTES:
            break
        if name != str(keep):
            Path(name).unlink(missing_ok=True)
            total -= size
