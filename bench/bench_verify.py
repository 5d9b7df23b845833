"""Benchmark: reading filters with verification (every layer against its digest) vs the same reads without.

Target: reads with checks at >= 0.8x the speed of reads without, same run. Run by hand:

    python bench/bench_verify.py [--repeat 9] [--models 2] [--dir /tmp/bench-verify]

The database holds ``--models`` random-weight WRN-28-10s (robustbench's architecture, 4.0M
3x3 filters, 138 MiB each). Each read path is timed with and without the checks, taking
turns round by round (files in the page cache, as a warm analysis reads them); "without"
is the read before checksums: one ``preadv`` of the same rows into a fresh array (as fast
as HDF5's ``read_direct``, also shown). Checked reads of 1 MiB or more hash a private
mapping of the file instead of copying (``filterdb.integrity.read_hashing``); the
"+ a pass" line adds one pass over the data to both sides, the cost a consumer then sees. The ratio is
the median of per-round ratios (speed with checks / speed without). Also printed: the
digest candidates' throughput on one model's filters (why xxh3-64, not zlib.crc32).
"""
from __future__ import annotations

import os
import shutil
import statistics
import time
import zlib

import numpy as np
import torch
import xxhash
from _harness import database_bench_arguments

from filterdb.build import add_module
from filterdb.integrity import _pread_exact
from filterdb.store import FilterDB, open_database


def wrn_28_10(seed: int) -> torch.nn.Module:
    from filterdb.compat import import_robustbench
    import_robustbench()
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet
    torch.manual_seed(seed)
    return WideResNet(depth=28, widen_factor=10).eval()


def _raw(db: FilterDB, mid: str, kernel: str, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of a shard, read without checks: one ``preadv`` into a fresh array (the read before checksums)."""
    dataset, check = db._filter_dataset(mid, kernel)
    out = np.empty((hi - lo, *dataset.shape[1:]), np.float32)
    if check._fd is None:
        check._fd = os.open(check.path, os.O_RDONLY)
    _pread_exact(check._fd, memoryview(out).cast("B"), check.raw_offset(dataset, kernel) + lo * out[0].nbytes)
    return out


def hdf5_read_model(db: FilterDB, mid: str, kernel: str = "3x3") -> np.ndarray:
    """The read before checksums: HDF5's read_direct of the model's whole dataset."""
    dataset = db._shard(mid)["filters"][kernel]
    out = np.empty(dataset.shape, np.float32)
    dataset.read_direct(out)
    return out


def raw_read_model(db: FilterDB, mid: str, kernel: str = "3x3") -> np.ndarray:
    return _raw(db, mid, kernel, 0, db._shard(mid)["filters"][kernel].shape[0])


def raw_read_layers(db: FilterDB, layers) -> int:
    n = 0
    for mid, kernel, start, stop in zip(layers["model_id"], layers["kernel"], layers["start"], layers["stop"]):
        base = db._spans[(mid, kernel)][0]
        n += len(_raw(db, mid, kernel, int(start) - base, int(stop) - base))
    return n


def raw_chunks(db: FilterDB, layers, chunk_rows: int = 1 << 20) -> int:
    n = 0
    rows = layers[layers["kernel"] == "3x3"]
    for mid, start, stop in zip(rows["model_id"], rows["start"], rows["stop"]):
        base = db._spans[(mid, "3x3")][0]
        for lo in range(int(start) - base, int(stop) - base, chunk_rows):
            n += len(_raw(db, mid, "3x3", lo, min(lo + chunk_rows, int(stop) - base)))
    return n


def main() -> None:
    args, root = database_bench_arguments(__doc__.splitlines()[0], models=2, repeat=9, work_prefix="bench-verify-")
    db_path = root / "db"
    shutil.rmtree(db_path, ignore_errors=True)
    with FilterDB.open(db_path, "a") as writer, writer.batch():
        for i in range(args.models):
            add_module(writer, wrn_28_10(i), source="bench", name=f"wrn{i}", input_shape=(3, 32, 32))

    with open_database(db_path) as db:
        mids = list(db.models.index)
        layers = db.layers
        n_bytes = int(layers.loc[layers["kernel"] == "3x3", "n_filters"].sum()) * 36
        paths = {
            "read_model (each model whole)": (lambda: [db.read_model(m) for m in mids],
                                              lambda: [raw_read_model(db, m) for m in mids]),
            "read_model vs HDF5 read_direct": (lambda: [db.read_model(m) for m in mids],
                                               lambda: [hdf5_read_model(db, m) for m in mids]),
            "read_model + a pass (max |w|)": (lambda: [np.abs(db.read_model(m)).max() for m in mids],
                                              lambda: [np.abs(raw_read_model(db, m)).max() for m in mids]),
            "read_layer (every layer)": (lambda: sum(len(f) for _, f in db.iter_layers()),
                                         lambda: raw_read_layers(db, layers)),
            "iter_filter_chunks (3x3, 1M rows)": (lambda: sum(len(c) for c in db.iter_filter_chunks("3x3")),
                                                  lambda: raw_chunks(db, layers)),
        }
        for verified, raw in paths.values():  # warm the page cache and the open shards
            verified(), raw()
        print(f"{args.models} WRN-28-10 shard(s), {n_bytes / 2**20:.0f} MiB of 3x3 filters; "
              f"median of {args.repeat} alternating rounds")
        print(f"{'read path':36s} {'without':>9s} {'with checks':>12s} {'speed ratio':>12s}")
        for name, (verified, raw) in paths.items():
            ratios, t_raw, t_ver = [], [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                raw()
                t1 = time.perf_counter()
                verified()
                t2 = time.perf_counter()
                t_raw.append(t1 - t0)
                t_ver.append(t2 - t1)
                ratios.append((t1 - t0) / (t2 - t1))
            print(f"{name:36s} {statistics.median(t_raw) * 1e3:7.1f}ms {statistics.median(t_ver) * 1e3:10.1f}ms "
                  f"{statistics.median(ratios):11.2f}x")

        data = raw_read_model(db, mids[0])
        view = memoryview(data).cast("B")
        print(f"digest throughput on {len(view) / 2**20:.0f} MiB (one core):")
        for name, fn in {"xxh3_64 (used)": lambda: xxhash.xxh3_64_intdigest(view),
                         "zlib.crc32": lambda: zlib.crc32(view),
                         "read, no checks": lambda: raw_read_model(db, mids[0]),
                         "HDF5 read_direct": lambda: hdf5_read_model(db, mids[0])}.items():
            fn()
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            print(f"  {name:34s} {len(view) / statistics.median(times) / 1e9:6.2f} GB/s")
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
