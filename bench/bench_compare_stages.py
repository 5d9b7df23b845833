"""Where the CPU time of one comparison goes, stage by stage, and the floor of its largest stage.

On a database of ``bench_scale.py`` (``--db``; e.g. its 10,000-model one), warm caches, one
``compare_groups(db, "robust", "normal", "first")`` in this process, BLAS on one thread: the
CPU seconds of each stage (the least of ``--repeat`` runs), then the divergence null's matrix
product on the same labelings and counts three ways:

- ``float32, every occupied bin``: the product before the bins were packed (the sums are exact
  in float32 below 2**24);
- ``float64, packed``: :class:`~filterdb.analysis.subset_sums.PackedCounts` (what compare does);
- ``product alone``: the packed columns' matrix product with the labelings already in float64,
  the floor of that stage on this machine.

    OPENBLAS_NUM_THREADS=1 python bench/bench_compare_stages.py --db /tmp/filterdb-bench-scale/small-10000
"""
from __future__ import annotations

import argparse
import functools
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from _harness import least_cpu_seconds  # noqa: E402

STAGES = ("divergence_permutation", "_reference_counts", "_metric_statistics", "two_sample_columns",
          "permutation_test_columns", "layer_metrics_frame", "_open", "_absmax", "reference_basis", "select_layers")


def timed_stages(db: str, repeat: int) -> tuple[dict[str, float], float, dict]:
    """(least CPU seconds per stage, least total, the divergence null's arguments of the last run)."""
    import filterdb.analysis.compare as compare

    best: dict[str, float] = {}
    captured: dict = {}
    for name in STAGES:  # each stage as compare_groups calls it, wrapped in a timer
        original = getattr(compare, name)

        @functools.wraps(original)
        def timed(*args, _original=original, _name=name, **kwargs):
            start = time.process_time()
            result = _original(*args, **kwargs)
            spent[_name] = spent.get(_name, 0.0) + time.process_time() - start
            if _name == "divergence_permutation" and not kwargs.get("paired"):
                captured["args"] = args
            return result
        setattr(compare, name, timed)
    totals = []
    for _ in range(repeat):
        spent: dict[str, float] = {}
        start = time.process_time()
        compare.compare_groups(db, "robust", "normal", "first")
        totals.append(time.process_time() - start)
        for name, seconds in spent.items():
            best[name] = min(best.get(name, np.inf), seconds)
    return best, min(totals), captured


def null_products(args, repeat: int) -> dict[str, float]:
    from filterdb.analysis.divergence import SplitDivergences
    from filterdb.analysis.stats import packed_labelings
    from filterdb.analysis.subset_sums import PackedCounts

    basis, counts_a, counts_b = args[:3]
    counts = np.stack(counts_a + counts_b)
    splits = SplitDivergences(counts.sum(axis=0), basis.edges, basis.pca.explained_variance_ratio)
    flat = counts.reshape(len(counts), -1)[:, splits.columns]
    masks = packed_labelings(len(counts_a), len(counts_b))[0][:]
    packed = PackedCounts(flat)

    def float32_every_bin():
        f = flat.astype(np.float32)
        for lo in range(0, len(masks), 512):
            masks[lo:lo + 512].astype(np.float32) @ f

    rows = 128
    block = masks[:rows].astype(np.float64)

    def product_alone():
        for _ in range(0, len(masks), rows):
            block @ packed.packed

    print(f"divergence null: {len(masks)} labelings x {len(counts)} models; {flat.shape[1]} occupied bins packed "
          f"into {packed.n_packed} float64 columns")
    return {"float32, every occupied bin (before)": least_cpu_seconds(float32_every_bin, repeat),
            "float64, packed (compare)": least_cpu_seconds(lambda: packed.masked_sums(masks), repeat),
            "product alone (floor)": least_cpu_seconds(product_alone, repeat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from filterdb.analysis.compare import compare_groups

    compare_groups(args.db, "robust", "normal", "first")  # caches warm, kept draws read once
    best, total, captured = timed_stages(args.db, args.repeat)
    print(f"compare_groups: {total:.3f} s CPU (least of {args.repeat})")
    for name, seconds in sorted(best.items(), key=lambda item: -item[1]):
        print(f"  {name:28s} {seconds:.3f} s")
    if "args" in captured:
        for label, seconds in null_products(captured["args"], args.repeat).items():
            print(f"  {label:40s} {seconds:.3f} s CPU")


if __name__ == "__main__":
    main()
