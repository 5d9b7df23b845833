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

    rows = weight.reshape(out, -1)
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-30)
    gram = unit @ unit.T
    ortho = 1 - (gram - torch.eye(out)).abs().sum().item() / (out * (out - 1)) if out > 1 else math.nan
    return {"sparsity": sparse.float().mean().item(), "ve_raw": ve(w), "ve_linf": ve(w[~sparse] / fmax[~sparse, None]),
            "orthogonality": ortho, "l1_norm": w.abs().sum().item(), "l2_norm": w.norm().item()}


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


if __name__ == "__main__":
    main()
