"""CPU time to draw the permutation null's label shuffles against reading them kept
(:mod:`filterdb.analysis.kept_draws`), of reading 10,000 bootstrap resamples of 2 x 5,000 models
kept as ``.npy`` records (:mod:`filterdb.npy_records`) against the same arrays in an ``.npz``,
and of importing scipy.stats against the exact Mann-Whitney p-value computed in
:mod:`filterdb.analysis.stats`.

    OPENBLAS_NUM_THREADS=1 python bench/bench_kept_draws.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _harness import least_cpu_seconds

from filterdb import npy_records


def main() -> None:
    os.environ["FILTERDB_HOME"] = tempfile.mkdtemp()  # kept draws go to a fresh home
    from filterdb.analysis import stats

    for n in (1000, 10000):
        n_a = n // 2
        draw = least_cpu_seconds(lambda n_a=n_a, n=n: stats._drawn_labelings(n_a, n - n_a, 9999, 0), 2)
        stats._kept_labelings(n_a, n - n_a, 9999, 0)  # writes the kept file
        read = least_cpu_seconds(lambda n_a=n_a, n=n: stats._kept_labelings(n_a, n - n_a, 9999, 0), 2)
        print(f"labelings 9,999 x {n}: draw {draw:.3f}s CPU, read kept {read:.3f}s CPU")
    counts = stats._drawn_counts((5000, 5000), 10000, 0)
    arrays = {f"counts{i}": c.astype(np.uint8) for i, c in enumerate(counts)}
    records, archive = Path(os.environ["FILTERDB_HOME"]) / "counts.draws", Path(os.environ["FILTERDB_HOME"]) / "counts.npz"
    with open(records, "wb") as out:
        npy_records.write(out, arrays)
    np.savez(archive, **arrays)

    def read_archive():
        with np.load(archive) as stored:
            return {name: stored[name] for name in stored.files}

    print(f"10,000 resamples of 2 x 5,000 models ({records.stat().st_size / 1e6:.0f} MB): read as .npy records "
          f"{least_cpu_seconds(lambda: npy_records.read(records), 3):.3f}s CPU, as .npz "
          f"{least_cpu_seconds(read_archive, 3):.3f}s CPU")
    code = "import time; t = time.process_time(); import scipy.stats; print(time.process_time() - t)"
    imports = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
               for _ in range(3)]
    a, b = list(range(8)), [x + 0.5 for x in range(8)]
    own = least_cpu_seconds(lambda: [stats.mann_whitney_p(a, b) for _ in range(100)], 3) / 100
    print(f"import scipy.stats {min(imports):.3f}s CPU; mann_whitney_p (exact, 8 + 8) {own * 1e6:.0f} us")


if __name__ == "__main__":
    main()
