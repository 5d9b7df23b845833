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

The shared values are checked to agree (torchconvquality computes in float32). Wall and
CPU (process) time are both reported: with ``--threads 1`` the CPU time of a run is its own
work even on a busy machine.

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
    cpu = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            t, c = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    check_agreement(results["filterdb layer_metrics"], results["torchconvquality measure_quality"], convs)

    wall, proc = (table(t) for t in (times, cpu))
    print(f"\nmedian of {args.repeats}{'':25s} wall ms  x floor    CPU ms  x floor")
    for (label, w), (_, c) in zip(wall, proc):
        print(f"{label:42s} {w:8.1f}   {w / wall[2][1]:6.2f}  {c:8.1f}   {c / proc[2][1]:6.2f}")
    for kind, rows in (("wall", wall), ("CPU", proc)):
        print(f"{kind}: filterdb / floor {rows[0][1] / rows[2][1]:.2f}x (target <= 1.15x); "
              f"torchconvquality / filterdb {rows[1][1] / rows[0][1]:.1f}x")


def table(times: dict) -> list[tuple[str, float]]:
    """Median ms of each run, the floor (Gram + read) third, the rest of filterdb last."""
    ms = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    ours = ms["filterdb layer_metrics"]
    return [("filterdb layer_metrics", ours), ("torchconvquality measure_quality", ms["torchconvquality measure_quality"]),
            ("floor = Gram + read", ms["floor: float32 Gram matrices"] + ms["floor: one read of the weights"]),
            ("  float32 Gram matrices", ms["floor: float32 Gram matrices"]),
            ("  one read of the weights", ms["floor: one read of the weights"]),
            ("filterdb orthogonality alone", ms["filterdb orthogonality alone"]),
            ("filterdb everything but orthogonality", ours - ms["filterdb orthogonality alone"])]


def check_agreement(ours: list[dict], theirs: dict, convs) -> None:
    """sparsity, raw variance entropy and orthogonality as both libraries compute them."""
    for values, (name, _) in zip(ours, convs):
        q = theirs[name]
        for mine, other in (("sparsity", "sparsity"), ("ve_raw", "variance_entropy"), ("orthogonality", "orthogonality")):
            assert math.isclose(values[mine], q[other], rel_tol=1e-4, abs_tol=1e-5), (name, mine, values[mine], q[other])


if __name__ == "__main__":
    main()
