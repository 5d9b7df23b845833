"""CPU time per filter of each stage of the divergence's histogram pass, on 2M random 3x3 filters
in memory (no read): sparsity mask, L-inf scaling, the BLAS projection, the binning, and the
whole ``Histograms.add`` and ``RangeScan.add``.

    OPENBLAS_NUM_THREADS=1 python bench/bench_divergence_stages.py
"""
from __future__ import annotations

import numpy as np
from _harness import least_cpu_seconds

from filterdb.analysis import projection_kernels as pk
from filterdb.analysis.divergence import _BLOCK, Histograms, RangeScan, _nonsparse, fit_basis


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1 << 21, 3, 3)).astype(np.float32)
    basis = fit_basis([x[:200_000]])
    absmax = float(np.abs(x).max())

    block = x.reshape(-1, 9)[:_BLOCK]
    reps = len(x) // _BLOCK
    keep = _nonsparse(block, absmax, 0.01)
    scaled, projected = np.empty((_BLOCK, 9)), np.empty((9, _BLOCK))
    counts = np.zeros((9, 70), np.int64)
    Histograms(basis).add(x[:1000], absmax)  # compile
    stages = {
        "sparsity mask": lambda: [_nonsparse(block, absmax, 0.01) for _ in range(reps)],
        "L-inf scaling": lambda: [pk.centred_linf_scaled(block, basis.pca.mean, keep, scaled) for _ in range(reps)],
        "BLAS projection 9x9": lambda: [np.matmul(basis.pca.components, scaled.T, out=projected) for _ in range(reps)],
        "binning (9 components)": lambda: [pk.add_bin_counts(projected, basis.edges, counts) for _ in range(reps)],
        "Histograms.add (all of it)": lambda: Histograms(basis).add(x, absmax),
        "RangeScan.add (all of it)": lambda: RangeScan(basis.pca).add(x, absmax),
    }
    for name, f in stages.items():
        print(f"{name}: {least_cpu_seconds(f, 5) / len(x) * 1e9:.1f} ns/filter CPU")


if __name__ == "__main__":
    main()
