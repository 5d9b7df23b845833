"""Metrics plus divergence over a large database: peak memory and throughput vs a raw read.

Builds (once) a database of WRN-28-10s with random weights, half of them labelled robust
(with a share of their filters zeroed, so sparsity and the divergence have something to
find), until it holds ``--filters`` 3x3 filters. Then, each phase in a fresh process
(peak RSS = that process's VmHWM):

- raw: a sequential h5py read of every shard's /filters/3x3, chunk by chunk (the fastest of 3);
- analysis: ``compare_groups(db, "robust", "normal", layer="all")`` with empty caches: the
  per-layer metrics pass (which also yields the moments behind the PCA basis), the
  divergence's range pass and its histogram pass;
- analysis (metrics cached): the same with the metrics cache filled and the divergence's
  cache (basis, histograms) emptied: the range and histogram passes only.

``--cold`` drops the files from the page cache (posix_fadvise) before each phase, so
raw and analysis both read from disk; without it both read from the page cache.

    python bench/bench_metrics_stream.py --db /tmp/bench-db --filters 100000000 [--cold]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from filterdb.build import add_module

WRN_FILTERS = 4_021_808  # 3x3 filters of a WRN-28-10 (the target counts 3x3 filters)


def build(db_path: Path, filters: int) -> None:
    import torch

    from filterdb.store import FilterDB
    from filterdb.training.registry import create_model
    n_models = math.ceil(filters / WRN_FILTERS)
    with FilterDB.open(db_path, "a") as db:
        have = len(db.models)
        for i in range(have, n_models):
            torch.manual_seed(i)
            model = create_model("wrn28-10")
            robust = i % 2 == 0
            if robust:  # a quarter of the filters dead, the rest a bit smoother
                with torch.no_grad():
                    for m in model.modules():
                        if isinstance(m, torch.nn.Conv2d):
                            w = m.weight.view(-1, *m.weight.shape[-2:])
                            w[torch.rand(len(w)) < 0.25] = 0
                            w += 0.5 * w.mean(dim=(1, 2), keepdim=True)
            t = time.perf_counter()
            add_module(db, model, source="bench", name=f"wrn-{i}", input_shape=(3, 32, 32),
                          record={"training": "robust" if robust else "normal", "dataset": "cifar10",
                                  "architecture": "WideResNet-28-10"})
            print(f"built model {i + 1}/{n_models} in {time.perf_counter() - t:.1f}s", flush=True)


def drop_page_cache(db_path: Path) -> None:
    for path in db_path.rglob("*.h5"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def phase_raw(db_path: Path) -> dict:
    import h5py
    import numpy as np
    n = 0
    buf = np.empty((1 << 20, 3, 3), np.float32)
    t = time.perf_counter()
    for shard in sorted((db_path / "shards").glob("*.h5")):
        with h5py.File(shard, "r") as f:
            ds = f["filters/3x3"]
            for lo in range(0, len(ds), len(buf)):
                hi = min(lo + len(buf), len(ds))
                ds.read_direct(buf, np.s_[lo:hi], np.s_[0:hi - lo])
                n += hi - lo
    return {"seconds": time.perf_counter() - t, "filters": n}


def phase_analysis(db_path: Path, jobs: int) -> dict:
    from filterdb.analysis.compare import compare_groups
    from filterdb.analysis.metrics_table import worker_pool
    t = time.perf_counter()
    if jobs > 1:
        with worker_pool(jobs) as executor:
            result = compare_groups(db_path, "robust", "normal", layer="all", executor=executor)
    else:
        result = compare_groups(db_path, "robust", "normal", layer="all")
    seconds = time.perf_counter() - t
    tests = result.tests.set_index("metric")
    div = result.divergence.set_index("kernel")
    return {"seconds": seconds, "divergence_3x3": float(div.loc["3x3", "divergence"]),
            "sparsity_difference": float(tests.loc["sparsity", "difference"]),
            "ve_linf_difference": float(tests.loc["ve_linf", "difference"])}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_phase(name: str, db_path: Path, cold: bool, jobs: int = 1) -> dict:
    if cold:
        drop_page_cache(db_path)
    out = subprocess.run([sys.executable, __file__, "--db", str(db_path), "--phase", name, "--jobs", str(jobs)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("/tmp/filterdb-bench-db"))
    parser.add_argument("--filters", type=int, default=100_000_000)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each phase")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes of the analysis (peak RSS: the main process's)")
    parser.add_argument("--phase", choices=["raw", "analysis"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = phase_raw(args.db) if args.phase == "raw" else phase_analysis(args.db, args.jobs)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return

    build(args.db, args.filters)
    from filterdb.store import open_database
    with open_database(args.db) as db:
        n3 = int((db.layers.loc[db.layers["kernel"] == "3x3", "n_filters"]).sum())
        size = sum(p.stat().st_size for p in (args.db / "shards").glob("*.h5"))
    print(f"database: {args.db}, {n3:,} 3x3 filters, shards {size / 1e9:.2f} GB; "
          f"page cache {'dropped before each phase' if args.cold else 'warm'}; analysis jobs {args.jobs}")
    raw = min((run_phase("raw", args.db, args.cold) for _ in range(3)), key=lambda r: r["seconds"])  # the floor
    for cache in ("metrics", "divergence"):  # the divergence's basis and the database's histograms
        shutil.rmtree(args.db / cache, ignore_errors=True)
    cold_cache = run_phase("analysis", args.db, args.cold, args.jobs)
    shutil.rmtree(args.db / "divergence")
    warm_cache = run_phase("analysis", args.db, args.cold, args.jobs)
    raw_rate = raw["filters"] / raw["seconds"]
    print(f"raw sequential h5py read (fastest of 3): {raw['seconds']:.1f}s, {raw_rate / 1e6:.1f} M filters/s, "
          f"peak RSS {raw['peak_rss_mb']:.0f} MB")
    for label, r in (("metrics + divergence (empty cache)", cold_cache), ("divergence: range + histograms (metrics cached)", warm_cache)):
        rate = n3 / r["seconds"]
        print(f"{label}: {r['seconds']:.1f}s, {rate / 1e6:.1f} M filters/s = {rate / raw_rate:.2f} x raw read, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"results: divergence {cold_cache['divergence_3x3']:.4f}, sparsity difference "
          f"{cold_cache['sparsity_difference']:.4f}, ve_linf difference {cold_cache['ve_linf_difference']:.4f}")


if __name__ == "__main__":
    main()
