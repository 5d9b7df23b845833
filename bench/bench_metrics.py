"""Per-layer metrics of a WRN-28-10: filterdb.analysis vs a straightforward implementation.

The baseline does what research code typically does, layer by layer in torch: sparsity,
variance entropy from ``torch.linalg.svd`` of the centered n x 9 matrix (raw and
L-inf-scaled non-sparse), the entropy in a Python loop over the singular values,
orthogonality from the normalised rows' Gram matrix, the norms. Both run on the same
in-memory layers, interleaved, best of ``--repeats``; the values are checked to agree.

    python bench/bench_metrics.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch


def baseline_layer(weight: torch.Tensor, eps: float = 0.01) -> dict:
    out = weight.shape[0]
    w = weight.reshape(-1, weight.shape[-2] * weight.shape[-1])
    fmax = w.abs().amax(dim=1)
    sparse = fmax < eps * fmax.max()

    def ve(x):
        if len(x) < 2:
            return math.nan
        s = torch.linalg.svd(x - x.mean(dim=0), full_matrices=False).S
        lam = s ** 2 / (len(x) - 1)
        p = lam / lam.sum()
        entropy = 0.0
        for pi in p.tolist():
            if pi > 0:
                entropy -= pi * math.log10(pi)
        return entropy

    return {"sparsity": sparse.float().mean().item(), "ve_raw": ve(w), "ve_linf": ve(w[~sparse] / fmax[~sparse, None]),
            "orthogonality": baseline_orthogonality(weight), "l1_norm": w.abs().sum().item(), "l2_norm": w.norm().item()}


def baseline_orthogonality(weight: torch.Tensor) -> float:
    out = weight.shape[0]
    rows = weight.reshape(out, -1)
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-30)
    gram = unit @ unit.T
    return 1 - (gram - torch.eye(out)).abs().sum().item() / (out * (out - 1)) if out > 1 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from filterdb.analysis.metrics import layer_metrics
    from filterdb.training.registry import create_model

    torch.manual_seed(0)
    model = create_model("wrn28-10")
    weights = [m.weight.detach().contiguous() for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    filters = [w.numpy().reshape(-1, w.shape[-2], w.shape[-1]) for w in weights]
    n = sum(len(f) for f in filters)
    print(f"WRN-28-10: {len(weights)} conv layers, {n:,} filters; torch threads {torch.get_num_threads()}")

    base_times, fast_times = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        base = [baseline_layer(w) for w in weights]
        base_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        fast = [layer_metrics(f, out_channels=w.shape[0])[0] for f, w in zip(filters, weights)]
        fast_times.append(time.perf_counter() - t)
    for b, f in zip(base, fast):
        for name, value in b.items():
            assert math.isclose(value, f[name], rel_tol=2e-4, abs_tol=2e-5) or (math.isnan(value) and math.isnan(f[name])), \
                (name, value, f[name])
    tb, tf = min(base_times), min(fast_times)
    print(f"baseline (torch SVD, Python-loop entropy): {tb * 1e3:8.1f} ms")
    print(f"filterdb.analysis.layer_metrics:           {tf * 1e3:8.1f} ms")
    print(f"speed-up: {tb / tf:.1f}x (values agree to 2e-4)")

    # Orthogonality is a Gram matrix of out x (in*k*k) rows: the same BLAS FLOPs in both,
    # and most of the time of the wide layers. The rest is what the fast path speeds up.
    from filterdb.analysis.metrics import orthogonality
    t_base_ortho = min(_timed(lambda: [baseline_orthogonality(w) for w in weights]) for _ in range(args.repeats))
    t_fast_ortho = min(_timed(lambda: [orthogonality(f, w.shape[0]) for f, w in zip(filters, weights)])
                       for _ in range(args.repeats))
    print(f"  orthogonality alone: baseline {t_base_ortho * 1e3:.1f} ms, filterdb {t_fast_ortho * 1e3:.1f} ms")
    rest_base, rest_fast = max(tb - t_base_ortho, 1e-9), max(tf - t_fast_ortho, 1e-9)
    print(f"  everything but orthogonality: baseline {rest_base * 1e3:.1f} ms, filterdb {rest_fast * 1e3:.1f} ms, "
          f"speed-up {rest_base / rest_fast:.1f}x")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
