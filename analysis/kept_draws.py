"""Seeded random draws kept on disk: the label shuffles of the permutation nulls and the bootstrap
resamples of a comparison depend only on the group sizes, their count and the seed, never on the
data, and drawing them costs more than reading them back (9,999 shuffles of 1,000 models: ~0.15 s
to draw, ~0.01 s to read; 2 x 10,000 bootstrap resamples of 500 models: ~0.05 s against ~0.01 s).

A kept draw is one file in ``$FILTERDB_HOME/cache/<kind>/``, named by its key (which includes
numpy's version: the generator's stream may change with it): ``.npy`` records one after another
(the arrays' names, an xxh3 digest of their bytes, then the arrays), read straight into their
arrays. An ``.npz`` would do, but zipfile reads it through a CRC and a copy: 0.28 s for the
100 MB of 10,000 resamples of 2 x 5,000 models, against 0.03 s (docs/benchmarks.md). A file that does not match its digest, or whose arrays
the caller's check rejects, is drawn again; a read-only or full home draws every time. The folder
is kept under :data:`KEPT_BYTES`: writing a file removes the oldest ones beyond it. Reading a kept
file writes nothing (not even its mtime): a read is free of side effects (docs/integrity.md).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

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
            np.save(out, np.array(list(arrays)))
            np.save(out, np.uint64(arrays_digest(arrays)))
            for value in arrays.values():
                np.save(out, value)
        _prune(path.parent, keep=path)
    except OSError:  # a read-only or full home: drawn each time
        pass
    return arrays


def read(path: Path) -> tuple[dict[str, np.ndarray], int]:
    """The arrays of a kept file and the digest it records of them."""
    with open(path, "rb") as stored:
        names = np.load(stored)
        recorded = int(np.load(stored))
        return {str(name): np.load(stored) for name in names}, recorded


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
