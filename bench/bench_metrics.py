"""Per-layer metrics of a WRN-28-10's 3x3 layers: filterdb vs the authors' library vs the floor.

On the 25 3x3 conv layers of a random-weight WRN-28-10 (4,021,808 filters), all in one run,
interleaved, median of ``--repeats``:

- filterdb: ``layer_metrics`` of every layer (sparsity, ve_raw, ve_linf, ve_normalized,
  orthogonality, L1/L2 norms);
- torchconvquality: ``measure_quality(model)``, the authors' library (sparsity, variance
  entropy raw and of the non-sparse filters, orthogonality), installed with the ``bench``
  extra (``pip install -e .[bench]``);
- the floor: what any implementation must do, the float32 Gram matrices of orthogonality
  (``rows @ rows.T`` at BLAS speed, default threads) plus one read of the weights (a
  float32 sum over every layer).

The shared values are checked to agree (torchconvquality computes in float32).

    python bench/bench_metrics.py [--repeats 7] [--threads 1]

``--threads 1`` (BLAS, torch) is the fair setting on a shared machine: a busy core stalls
a multi-threaded BLAS many times over.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="BLAS and torch threads (default: their own)")
    args = parser.parse_args()
    from torchconvquality import measure_quality

    from filterdb.analysis.metrics import layer_metrics, orthogonality
    from filterdb.training.registry import create_model

    torch.manual_seed(0)
    model = create_model("wrn28-10").eval()
    if args.threads:  # after every import: limits apply to the libraries loaded by then
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
        torch.set_num_threads(args.threads)
    convs = [(name, m) for name, m in model.named_modules()
             if type(m) is torch.nn.Conv2d and m.kernel_size == (3, 3)]  # the layers measure_quality takes
    weights = [m.weight.detach().numpy() for _, m in convs]
    n = sum(w.shape[0] * w.shape[1] for w in weights)
    from threadpoolctl import threadpool_info
    blas = ", ".join(f"{lib['internal_api']} {lib['num_threads']}" for lib in threadpool_info() if lib["user_api"] == "blas")
    print(f"WRN-28-10: {len(weights)} 3x3 conv layers, {n:,} filters; threads: torch {torch.get_num_threads()}, {blas}")

    def gram_floor():
        for w in weights:
            rows = w.reshape(w.shape[0], -1)
            rows @ rows.T

    def read_floor():
        for w in weights:
            np.add.reduce(w.reshape(-1))

    runs = {
        "filterdb layer_metrics": lambda: [layer_metrics(w)[0] for w in weights],
        "torchconvquality measure_quality": lambda: measure_quality(model),
        "floor: float32 Gram matrices": gram_floor,
        "floor: one read of the weights": read_floor,
        "filterdb orthogonality alone": lambda: [orthogonality(w) for w in weights],
    }
    results = {name: run() for name, run in runs.items()}  # warm-up (numba loads its compiled pass)
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    check_agreement(results["filterdb layer_metrics"], results["torchconvquality measure_quality"], convs)

    ms = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    floor = ms["floor: float32 Gram matrices"] + ms["floor: one read of the weights"]
    ours, theirs = ms["filterdb layer_metrics"], ms["torchconvquality measure_quality"]
    rest = ours - ms["filterdb orthogonality alone"]
    rows = [("filterdb layer_metrics", ours), ("torchconvquality measure_quality", theirs),
            ("floor = Gram + read", floor), ("  float32 Gram matrices", ms["floor: float32 Gram matrices"]),
            ("  one read of the weights", ms["floor: one read of the weights"]),
            ("filterdb orthogonality alone", ms["filterdb orthogonality alone"]),
            ("filterdb everything but orthogonality", rest)]
    print(f"\nmedian of {args.repeats} (ms){'':22s}   ms    x floor")
    for label, value in rows:
        print(f"{label:42s} {value:8.1f}   {value / floor:6.2f}")
    print(f"\nfilterdb / floor {ours / floor:.2f}x (target <= 1.5x); torchconvquality / filterdb {theirs / ours:.1f}x")


def check_agreement(ours: list[dict], theirs: dict, convs) -> None:
    """sparsity, raw variance entropy and orthogonality as both libraries compute them."""
    for values, (name, _) in zip(ours, convs):
        q = theirs[name]
        for mine, other in (("sparsity", "sparsity"), ("ve_raw", "variance_entropy"), ("orthogonality", "orthogonality")):
            assert math.isclose(values[mine], q[other], rel_tol=1e-4, abs_tol=1e-5), (name, mine, values[mine], q[other])


if __name__ == "__main__":
    main()
