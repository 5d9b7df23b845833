"""Benchmark: the cost of HDF5's Fletcher-32 layout (chunked filter datasets, a checksum per chunk).

Exports (format 1.1) write /filters/<kernel> chunked with Fletcher-32; this measures it against
the layout before (contiguous, unfiltered), in the same run, on:

- write: ``write_packed`` of the whole database;
- read through filterdb: every layer through ``PackedDB.iter_layers`` (each checked against its
  xxh3-64 digest, as every command reads);
- read through h5py alone: every filter dataset read whole (``ds[()]``), and layer by layer;

and, for shards, what the same layout would cost filterdb's shard read path: today's (contiguous
shards, mapped/preadv reads hashed with xxh3 by ``iter_layers``) against h5py reads of
a chunked Fletcher-32 copy of each shard's filters plus the same xxh3 check. Files are in the
page cache (a warm analysis); layouts take turns round by round and each ratio is the median of
per-round ratios (time of the Fletcher-32 layout / time of today's). Run by hand:

    python bench/bench_fletcher.py [--models 2] [--repeat 5] [--dir /tmp/bench-fletcher]
"""
from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from _harness import database_bench_arguments
from torch import nn

from filterdb import integrity
from filterdb.build import add_module
from filterdb.packed import CHUNK_BYTES, ChunkWriter, PackedDB, create_filter_dataset, write_packed
from filterdb.reading import DatabaseReading
from filterdb.store import FilterDB, open_database

CHUNK_SIZES = (CHUNK_BYTES, 1 << 20, 4 << 20)


def model(seed: int) -> nn.Module:
    """525,056 3x3 filters (18.9 MiB) in four layers of 768 to 262,144 filters."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 256, 3), nn.Conv2d(256, 512, 3), nn.Conv2d(512, 512, 3),
                         nn.Conv2d(512, 256, 3), nn.Conv2d(256, 64, 1))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def read_packed(path: Path) -> None:
    with PackedDB(path) as db:
        for _ in db.iter_layers():
            pass


def read_h5py_whole(path: Path) -> None:
    with h5py.File(path, "r") as f:
        for kernel in f["filters"]:
            f["filters"][kernel][()]


def read_h5py_layers(path: Path) -> None:
    with h5py.File(path, "r") as f:
        layers = f["layers"]
        for kernel, start, stop in zip(layers["kernel"].asstr()[()], layers["start"][()], layers["stop"][()]):
            f["filters"][kernel][start:stop]


def read_shards(db: DatabaseReading) -> None:
    """Every layer of an open database through filterdb's shard reader (xxh3-checked)."""
    for _ in db.iter_layers():
        pass


def fletcher_shard_copies(db_dir: Path, out: Path) -> list[tuple[Path, list[tuple[str, int, int, int]]]]:
    """Per shard, a file with its filters chunked with Fletcher-32 and its layers' (kernel, start, stop, digest)."""
    copies = []
    with open_database(db_dir) as db:
        for mid in db.models.index:
            path = out / f"{mid}.h5"
            rows = db.layers[db.layers["model_id"] == mid]
            layers = []
            with h5py.File(path, "w", libver="latest") as f:
                group = f.create_group("filters")
                for kernel, frame in rows.groupby("kernel"):
                    kh, kw = map(int, kernel.split("x"))
                    ds = create_filter_dataset(group, kernel, (int(frame["n_filters"].sum()), kh, kw))
                    with ChunkWriter(ds) as writer:
                        lo = 0
                        for _, row in frame.iterrows():
                            filters = db.read_layer(row)
                            writer.write(filters)
                            layers.append((kernel, lo, lo + len(filters), integrity.filter_digest(filters)))
                            lo += len(filters)
            copies.append((path, layers))
    return copies


def read_fletcher_shards(files: list[tuple[h5py.File, list]]) -> None:
    """The same layers from open chunked Fletcher-32 copies through h5py, with the same xxh3 check."""
    for f, layers in files:
        for kernel, lo, hi, digest in layers:
            ds = f["filters"][kernel]
            filters = np.empty((hi - lo, *ds.shape[1:]), np.float32)
            ds.read_direct(filters, source_sel=np.s_[lo:hi])
            assert integrity.filter_digest(filters) == digest


def median_ratio(new: list[float], old: list[float]) -> float:
    return statistics.median(n / o for n, o in zip(new, old))


def main() -> None:
    args, work = database_bench_arguments(__doc__.splitlines()[0], models=2, repeat=5, work_prefix="bench-fletcher-")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db_dir = work / "db"
    with FilterDB.open(db_dir, "a") as db:
        for i in range(args.models):
            add_module(db, model(i), source="bench", name=f"m{i}", input_shape=(3, 9, 9))
        n_filters = int(db.layers["n_filters"].sum())
        n_bytes = int((db.layers["n_filters"] * db.layers["kernel_h"] * db.layers["kernel_w"] * 4).sum())
    print(f"{args.models} models, {n_filters:,} filters, {n_bytes / 2**20:.1f} MiB; load average "
          f"{os.getloadavg()[0]:.2f}; {args.repeat} rounds")

    layouts = {"contiguous": 0, **{f"fletcher {c >> 10} KiB": c for c in CHUNK_SIZES}}
    times: dict[tuple[str, str], list[float]] = {}
    with open_database(db_dir) as db:
        for _ in range(args.repeat):
            for name, chunk in layouts.items():
                out = work / f"{chunk}.h5"
                out.unlink(missing_ok=True)
                times.setdefault(("write", name), []).append(
                    timed(lambda out=out, chunk=chunk: write_packed(db, out, chunk_bytes=chunk)))
    for _ in range(args.repeat):
        for name, chunk in layouts.items():
            out = work / f"{chunk}.h5"
            for what, fn in (("read filterdb", read_packed), ("read h5py whole", read_h5py_whole),
                             ("read h5py by layer", read_h5py_layers)):
                fn(out)  # warm
                times.setdefault((what, name), []).append(timed(lambda fn=fn, out=out: fn(out)))
    print(f"{'':22s}" + "".join(f"{n:>20s}" for n in layouts))
    for what in ("write", "read filterdb", "read h5py whole", "read h5py by layer"):
        base = times[(what, "contiguous")]
        cells = [f"{statistics.median(base) * 1e3:9.1f} ms (1.00x)"]
        cells += [f"{statistics.median(times[(what, n)]) * 1e3:9.1f} ms ({median_ratio(times[(what, n)], base):.2f}x)"
                  for n in list(layouts)[1:]]
        print(f"{what:22s}" + "".join(f"{c:>20s}" for c in cells))

    copies_dir = work / "fletcher-shards"
    copies_dir.mkdir()
    copies = fletcher_shard_copies(db_dir, copies_dir)
    files = [(h5py.File(path, "r", rdcc_nbytes=4 * CHUNK_BYTES), layers) for path, layers in copies]
    today, fletcher = [], []
    with open_database(db_dir) as db:
        read_shards(db)
        read_fletcher_shards(files)
        for _ in range(args.repeat):
            today.append(timed(lambda: read_shards(db)))
            fletcher.append(timed(lambda: read_fletcher_shards(files)))
    for f, _ in files:
        f.close()
    print(f"shards, filterdb read path (all layers, xxh3 checked): today {statistics.median(today) * 1e3:.1f} ms, "
          f"chunked+fletcher32 ({CHUNK_BYTES >> 10} KiB) {statistics.median(fletcher) * 1e3:.1f} ms ({median_ratio(fletcher, today):.2f}x)")
    size = {n: (work / f"{c}.h5").stat().st_size for n, c in layouts.items()}
    print("export size: " + ", ".join(f"{n} {s / 2**20:.2f} MiB" for n, s in size.items()))
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
