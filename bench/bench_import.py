"""Bench `filterdb import cnn-filter-db`: throughput against a raw sequential read of /filters, and peak memory.

Writes (once, then reuses) a synthetic file in the published layout: ``--filters`` 3x3 filters
(default 100M) as float64 (the authors' extraction code) or float32, in WideResNet-28-10-like
models of about 4M filters, ``/meta`` written by pandas' ``to_hdf``. Then, each in its own
process so that its peak memory is its own, with the file's pages dropped from the page cache
before each (the published file, 72 GB, does not fit in memory: it is read from disk):

1. raw read, cold: h5py reads /filters sequentially into one reused buffer of 1M filters (the
   baseline), from disk;
2. raw read, warm: the same again, now from the page cache (if the file fits in memory);
3. raw read, direct: the bytes of /filters read with O_DIRECT (as the import reads them), from disk;
4. raw write: as many float32 bytes as the import writes, written sequentially to a new file;
5. import: ``import_cnn_filter_db`` (what ``filterdb import cnn-filter-db`` runs) into a fresh
   database, timed without the process's start (importing torch and filterdb). It reads and
   writes with O_DIRECT, from disk whatever the page cache holds.

Ratios are raw time over import time, so 1.0 means the import is as fast as the raw read.
CPU times are user + system of the whole child process, its start included.
Needs ~11 GB free for float64 (7.2 GB file + 3.6 GB database): ``df -h /tmp``.

    python bench/bench_import.py [--filters 100_000_000] [--dtype float64] [--dir /tmp/filterdb-bench-import]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

CHUNK = 1 << 20
# a WideResNet-28-10's 3x3 convolutions (in, out): ~4.1M filters
WRN = [(3, 16)] + [(16, 160)] + [(160, 160)] * 7 + [(160, 320)] + [(320, 320)] * 7 + [(320, 640)] + [(640, 640)] * 7


def write_synthetic(path: Path, n_filters: int, dtype: str) -> int:
    import h5py
    import pandas as pd

    rows, index, start, number = [], [], 0, 0
    while start < n_filters:
        name = f"robustbench_Synthetic{number}_cifar10_linf_13" if number % 2 == 0 else f"timm_wrn{number}_cifar10_13"
        for depth, (cin, cout) in enumerate(WRN):
            n = cin * cout
            rows.append({"layer_depth": 2 * depth, "in_channels": cin, "out_channels": cout,
                         "filter_ids": f"{start}:{start + n - 1}", "model": name, "Robust": number % 2 == 0,
                         "Clean Accuracy": 90.0, "Network": "WideResNet-28-10", "Training-Dataset": "CIFAR-10",
                         "Task": "Image Classification", "Visual Category": "natural", "Input Shape": "[3, 32, 32]"})
            index.append((number, depth, depth / (len(WRN) - 1), len(index)))
            start += n
        number += 1
    tmp = path.with_name(path.name + ".partial")
    rng = np.random.default_rng(0)
    with h5py.File(tmp, "w") as f:
        ds = f.create_dataset("filters", shape=(start, 3, 3), dtype=dtype)
        for lo in range(0, start, CHUNK):
            hi = min(lo + CHUNK, start)
            ds[lo:hi] = rng.standard_normal((hi - lo, 3, 3), dtype=np.float64 if dtype == "float64" else np.float32)
    meta = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(
        index, names=["model_id", "conv_depth", "conv_depth_norm", "layer_id"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta.to_hdf(tmp, key="meta")
    os.replace(tmp, path)
    return start


RAW_READ = """
import sys, time, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as f:
    ds = f["filters"]
    buf = np.empty((min({chunk}, len(ds)), 3, 3), ds.dtype)
    t0 = time.perf_counter()
    for lo in range(0, len(ds), {chunk}):
        hi = min(lo + {chunk}, len(ds))
        ds.read_direct(buf, source_sel=np.s_[lo:hi], dest_sel=np.s_[:hi - lo])
    print(time.perf_counter() - t0)
"""


IMPORT = """
import resource, sys, time
from filterdb.sources.cnn_filter_db import import_cnn_filter_db
from filterdb.store import FilterDB
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with FilterDB.open(sys.argv[2], "a") as db:
    t0 = time.perf_counter()
    report = import_cnn_filter_db(sys.argv[1], db, show_progress=False)
    seconds = time.perf_counter() - t0
assert not report.failed and report.count("added") == len(report.outcomes), report.to_frame()
print(seconds, base / 1024)
"""


RAW_DIRECT_READ = """
import sys, time, h5py
from filterdb.sources.direct_io import DirectFile, aligned_buffer
with h5py.File(sys.argv[1], "r") as f:
    ds = f["filters"]
    n, row, offset = len(ds), ds.dtype.itemsize * 9, ds.id.get_offset()
source, buf = DirectFile(sys.argv[1], "r"), aligned_buffer({chunk} * row)
t0 = time.perf_counter()
for lo in range(0, n, {chunk}):
    source.read(buf, offset + lo * row, (min(lo + {chunk}, n) - lo) * row)
print(time.perf_counter() - t0)
"""


RAW_WRITE = """
import os, sys, time, numpy as np
buf = np.ones(({chunk}, 3, 3), np.float32)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
t0 = time.perf_counter()
for lo in range(0, int(sys.argv[2]), {chunk}):
    os.write(fd, memoryview(buf[:min({chunk}, int(sys.argv[2]) - lo)]).cast("B"))
print(time.perf_counter() - t0)
os.close(fd)
"""


def evict(path: Path) -> None:
    """Write every dirty page back, then drop the file's pages from the page cache: the next read is from disk."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_child(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stdout) of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{argv[:3]} failed:\n{done.stdout}\n{done.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux; the max over all children so far
    if peak <= before:
        peak = float("nan")  # hidden by an earlier, larger child
    return wall, peak / 1024, done.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--filters", type=int, default=100_000_000)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--dir", type=Path, default=Path("/tmp/filterdb-bench-import"))
    args = p.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    source = args.dir / f"cnn-filter-db-{args.filters}-{args.dtype}.h5"
    if not source.exists():
        t0 = time.perf_counter()
        print(f"writing {source} ...", flush=True)
        write_synthetic(source, args.filters, args.dtype)
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    import h5py
    with h5py.File(source, "r") as f:
        n = len(f["filters"])
    size = source.stat().st_size
    db = args.dir / "db"
    shutil.rmtree(db, ignore_errors=True)

    read = [sys.executable, "-c", RAW_READ.format(chunk=CHUNK), str(source)]
    evict(source)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    raw_cold = float(run_child(read)[2])
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    raw_cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    raw_warm = float(run_child(read)[2])  # the file's pages are now cached (if they fit in memory)
    evict(source)
    raw_direct = float(run_child([sys.executable, "-c", RAW_DIRECT_READ.format(chunk=CHUNK), str(source)])[2])
    scratch = args.dir / "raw-write.bin"
    evict(source)
    raw_write = float(run_child([sys.executable, "-c", RAW_WRITE.format(chunk=CHUNK), str(scratch), str(n)])[2])
    scratch.unlink()
    evict(source)
    # The import runs in a process of its own: its peak RSS is then the largest child's so far
    # (the raw reads and writes hold one 1M-filter buffer).
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    _, import_peak, out = run_child([sys.executable, "-c", IMPORT, str(source), str(db)])
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    import_wall, startup_rss = map(float, out.split())

    from filterdb.store import open_database
    with open_database(db) as opened, h5py.File(source, "r") as f:  # spot check: first and last layers, bit for bit
        models = opened.models.assign(published=[json.loads(j)["model_id"] for j in opened.models["published_json"]])
        models = models.sort_values("published")
        offsets = dict(zip(models["model_id"], np.cumsum(models["n_filters"]) - models["n_filters"]))
        assert int(opened.layers["n_filters"].sum()) == n
        layers = opened.layers.sort_values(["model_id", "layer_index"])
        for _, layer in layers.iloc[[0, 1, -2, -1]].iterrows():
            lo = int(offsets[layer["model_id"]] + layer["start"] - layers[layers["model_id"] == layer["model_id"]]["start"].min())
            want = f["filters"][lo:lo + int(layer["n_filters"])].astype(np.float32)
            assert np.array_equal(opened.read_layer(layer).view(np.uint32), want.view(np.uint32))
    result = {
        "filters": n, "dtype": args.dtype, "file_gb": round(size / 1e9, 2),
        "raw_read_cold_s": round(raw_cold, 1), "raw_read_warm_s": round(raw_warm, 1),
        "raw_read_cold_cpu_s": round(raw_cpu, 1), "raw_read_direct_s": round(raw_direct, 1),
        "raw_write_s": round(raw_write, 1),
        "import_s": round(import_wall, 1), "import_filters_per_s": round(n / import_wall),
        "import_cpu_s": round(cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime, 1),
        "ratio_import_vs_cold_read": round(raw_cold / import_wall, 3),
        "ratio_import_vs_warm_read": round(raw_warm / import_wall, 3),
        "ratio_import_vs_direct_read": round(raw_direct / import_wall, 3),
        "ratio_import_vs_cold_read_plus_write": round((raw_cold + raw_write) / import_wall, 3),
        "import_peak_rss_mib": round(import_peak), "rss_after_importing_filterdb_mib": round(startup_rss),
        "db_gb": round(sum(p.stat().st_size for p in db.rglob("*") if p.is_file()) / 1e9, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
