"""Scale: open, add, info, compare and reads on synthetic databases of 10 ... 10,000 models.

Run by hand::

    python bench/bench_scale.py                       # 10, 100, 1,000, 10,000 small models + 1,000 WRN-sized
    python bench/bench_scale.py --sizes 10,100 --wrn 0 --repeat 5

Each database is built once under ``--dir`` (kept for reruns) through the real writer
(``FilterDB.add_extracted``; random float32 weights in the layer tables of a real
extraction): small models have 4 convolutions, the WRN-sized ones the 28 of a WRN-28
(narrow, so that 1,000 fit on disk). Then, per database, every operation runs in a fresh
interpreter, ``--repeat`` times (median): API operations are timed inside it after the
imports, CLI commands from outside minus a bare interpreter's start (``python -c pass``,
measured in the same run), next to the imports every read command pays (click, h5py, numpy,
pandas, rich); peak memory is the process's max RSS. The metrics cache, the divergence basis
and its histograms are warmed once before ``compare`` (one ``metrics`` and one ``compare`` run). Results: a table with each time against the 10-model
database, ``--out``/bench_scale.csv and a log-log plot of CPU time ``--out``/bench_scale.png
(CPU rather than wall time: on a shared machine the wall time mostly measures the load).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
API_OPS = ("open_read", "open_write_add", "read_one_layer_h5py", "read_one_model_api", "read_first_h5py",
           "read_first_h5py_held", "read_first_api")
CLI_OPS = {"info": ["info"], "info_csv": ["info", "--format", "csv"],
           "compare_first": ["compare", "robust", "normal", "--layer", "first"]}


# ------------------------------------------------------------------ synthetic models

def template(kind: str):
    """The layers (ExtractedLayer) of a real extraction of a small net or a narrow WRN-28."""
    from torch import nn

    from filterdb.extract import extract_members

    if kind == "small":
        net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3), nn.Conv2d(16, 32, 3), nn.Conv2d(32, 10, 1))
    else:  # 28 convolutions like a WRN-28 (25 3x3, 3 1x1 shortcuts), 16 channels wide
        convs = [nn.Conv2d(3, 16, 3, padding=1)] + [nn.Conv2d(16, 16, 3, padding=1) for _ in range(24)]
        convs += [nn.Conv2d(16, 16, 1) for _ in range(3)]
        net = nn.Sequential(*convs)
    return extract_members([net], (3, 16, 16), model_name=kind, check_values=False), net


def synthetic_model(kind: str, i: int, name: str | None = None):
    import torch

    from filterdb.extract import ExtractedLayer
    from filterdb.records import model_record

    if kind not in TEMPLATES:
        TEMPLATES[kind] = template(kind)
    layers, net = TEMPLATES[kind]
    generator = torch.Generator().manual_seed(i)
    fresh = [ExtractedLayer(layer.info, torch.randn(layer.weight.shape, generator=generator), kind) for layer in layers]
    record = {"training": "robust" if i % 2 else "normal", "dataset": "cifar10", "architecture": kind}
    row = model_record("bench", name or f"{kind}-{i:05d}", fresh, record,
                       n_params=sum(p.numel() for p in net.parameters()), n_members=1, input_shape=(3, 16, 16))
    return row, fresh


TEMPLATES: dict = {}


def build(db_dir: Path, kind: str, n: int, workers: int = 1) -> None:
    """Build the database through the writer; with ``workers``, worker processes write the
    shards (as ``filterdb build --jobs`` does) and the writer then registers them."""
    from filterdb.store import FilterDB, open_database

    if (db_dir / "filterdb.h5").exists():
        with open_database(db_dir) as db:
            done = len(db.models) >= n
        if done:
            with FilterDB.open(db_dir, "a"):  # brings an older master up to date before anything is timed
                return
        shutil.rmtree(db_dir)  # an interrupted build: start over
    t0 = time.perf_counter()
    if workers > 1:
        procs = [subprocess.Popen([sys.executable, __file__, "--write-shards", f"{r}/{workers}/{n}", "--db", str(db_dir),
                                   "--kind", kind]) for r in range(workers)]
        assert all(p.wait() == 0 for p in procs)
        with FilterDB.open(db_dir, "a"):  # the master, from the shards
            pass
    else:
        with FilterDB.open(db_dir, "a") as db, db.batch(max_delay=3600):
            for i in range(n):
                db.add_extracted(*synthetic_model(kind, i))
    print(f"built {db_dir.name}: {n} {kind} models in {time.perf_counter() - t0:.1f} s", flush=True)


# ------------------------------------------------------------------ the operations (in a fresh interpreter)

def run_op(op: str, db_dir: Path, kind: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one operation, imports excluded."""
    import h5py
    import numpy as np

    from filterdb.store import FilterDB, open_database

    t0, c0 = time.perf_counter(), time.process_time()
    if op == "open_read":
        with open_database(db_dir) as db:
            len(db.models)
    elif op == "open_write_add":
        row, layers = synthetic_model(kind, 1_000_000 + os.getpid(), name=f"added-{os.getpid()}-{time.time_ns()}")
        t0, c0 = time.perf_counter(), time.process_time()
        with FilterDB.open(db_dir, "a") as db:
            db.add_extracted(row, layers)
    elif op == "read_one_layer_h5py":
        with h5py.File(db_dir / "filterdb.h5", "r") as f:
            row = len(f["layers/start"]) // 2
            kernel = f["layers/kernel"][row].decode()
            f["filters"][kernel][f["layers/start"][row]:f["layers/stop"][row]]
    elif op == "read_one_model_api":
        with open_database(db_dir) as db:
            db.read_model(db.models.index[len(db.models) // 2])
    elif op in ("read_first_h5py", "read_first_h5py_held"):
        # As the README shows: /filters/3x3 indexed afresh for each layer. "_held": one Dataset object kept
        # across the reads, which keeps every shard it has read open inside HDF5 until it is closed.
        with h5py.File(db_dir / "filterdb.h5", "r") as f:
            depth, kernel = f["layers/conv_depth"][()], f["layers/kernel"][()]
            start, stop = f["layers/start"][()], f["layers/stop"][()]
            first = np.flatnonzero((depth == 0) & (kernel == b"3x3"))
            if op == "read_first_h5py":
                total = sum(len(f["filters/3x3"][start[r]:stop[r]]) for r in first)
            else:
                filters = f["filters/3x3"]
                total = sum(len(filters[start[r]:stop[r]]) for r in first)
            assert total == int((stop[first] - start[first]).sum())
    elif op == "read_first_api":
        with open_database(db_dir) as db:
            db.read_filters(db.layers[db.layers["conv_depth"] == 0])
    else:
        raise ValueError(op)
    return time.perf_counter() - t0, time.process_time() - c0


def in_fresh_process(args: list[str], env: dict | None = None) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS MiB, stdout) of one child process. This process
    imports nothing heavy, so the child's max RSS (which starts from ours at the fork) is its own."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode})")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out


def measure(db_dir: Path, kind: str, repeat: int, bare: tuple[float, float], filterdb_bin: str
            ) -> dict[str, tuple[float, float, float]]:
    """op -> (median wall s, median CPU s, peak RSS MiB); CLI times are beyond the bare interpreter's."""
    results = {}
    for op in [*API_OPS, *CLI_OPS]:
        walls, cpus, peaks = [], [], []
        if op == "compare_first":  # open_write_add added models: the caches are warmed for them first
            in_fresh_process([filterdb_bin, *CLI_OPS[op], "--db", str(db_dir)])
        for _ in range(repeat):
            if op in CLI_OPS:
                wall, cpu, peak, _ = in_fresh_process([filterdb_bin, *CLI_OPS[op], "--db", str(db_dir)])
                wall, cpu = wall - bare[0], cpu - bare[1]
            else:
                _, _, peak, out = in_fresh_process([sys.executable, __file__, "--op", op, "--db", str(db_dir),
                                                    "--kind", kind])
                wall, cpu = json.loads(out)["seconds"]
            walls.append(wall)
            cpus.append(cpu)
            peaks.append(peak)
        results[op] = (statistics.median(walls), statistics.median(cpus), max(peaks))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--wrn", type=int, default=1000, help="models in the WRN-sized database (0: none)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/filterdb-bench-scale"))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--op", help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="small", help=argparse.SUPPRESS)
    parser.add_argument("--build", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--write-shards", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.op:
        print(json.dumps({"seconds": run_op(args.op, args.db, args.kind)}))
        return
    if args.build:
        # One writer through the batch API: worker processes write shards no faster on 2 cores, and
        # the writer must then read every shard back (10,000 shards: 11 min to write, over 20 to adopt).
        build(args.db, args.kind, args.build, workers=1)
        return
    if args.write_shards:
        from filterdb.shards import write_shard

        r, k, n = map(int, args.write_shards.split("/"))
        for i in range(r, n, k):
            write_shard(args.db, *synthetic_model(args.kind, i))
        return

    filterdb_bin = str(Path(sys.executable).with_name("filterdb"))
    # Byte-compile the package as pip does on install (an environment with PYTHONDONTWRITEBYTECODE
    # would otherwise compile every module in every timed command: about 0.3 s).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "filterdb"), str(HERE.parent / "analysis"),
                    str(HERE.parent / "training")], check=True, stdout=subprocess.DEVNULL)
    dbs = [(n, "small", args.dir / f"small-{n}") for n in map(int, args.sizes.split(","))]
    if args.wrn:
        dbs.append((args.wrn, "wrn", args.dir / f"wrn-{args.wrn}"))
    for n, kind, path in dbs:  # built in a child: this process stays small (see in_fresh_process)
        subprocess.run([sys.executable, __file__, "--build", str(n), "--db", str(path), "--kind", kind], check=True)
        in_fresh_process([filterdb_bin, "metrics", "--db", str(path), "--format", "csv"])  # warm the cache
        in_fresh_process([filterdb_bin, *CLI_OPS["compare_first"], "--db", str(path)])  # and the divergence's

    runs = [in_fresh_process([sys.executable, "-c", "pass"]) for _ in range(5)]
    bare = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    # As the console script starts them (filterdb.entry: numpy's BLAS on one thread unless the user chose).
    from filterdb.entry import default_blas_to_one_thread

    cli_env = dict(os.environ)
    default_blas_to_one_thread(cli_env)
    runs = [in_fresh_process([sys.executable, "-c", "import click, h5py, numpy, pandas, rich.table"], cli_env)
            for _ in range(5)]
    floor = statistics.median(r[1] for r in runs) - bare[1]
    print(f"imports every read command pays (click, h5py, numpy, pandas, rich): {floor:.3f} s CPU beyond the "
          "interpreter", flush=True)
    runs = [in_fresh_process([filterdb_bin, "--help"]) for _ in range(5)]
    help_wall, help_cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    print(f"bare interpreter start {bare[0]:.3f} s wall, {bare[1]:.3f} s CPU; filterdb --help {help_wall:.3f} s "
          f"wall ({help_wall - bare[0]:.3f} s beyond the interpreter), {help_cpu:.3f} s CPU "
          f"({help_cpu - bare[1]:.3f} s beyond)")
    rows = []
    for n, kind, path in dbs:
        for op, (seconds, cpu, peak) in measure(path, kind, args.repeat, bare, filterdb_bin).items():
            rows.append({"models": n, "kind": kind, "op": op, "seconds": seconds, "cpu_seconds": cpu,
                         "peak_rss_mib": peak})
            print(f"{kind:5} {n:6d} {op:20} {seconds:8.4f} s wall {cpu:8.4f} s CPU {peak:7.1f} MiB", flush=True)

    import pandas as pd

    frame = pd.DataFrame(rows)
    small = frame[frame["kind"] == "small"]
    base = small[small["models"] == small["models"].min()].set_index("op")
    frame["vs_smallest"] = frame["seconds"] / frame["op"].map(base["seconds"])
    frame["cpu_vs_smallest"] = frame["cpu_seconds"] / frame["op"].map(base["cpu_seconds"])
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "bench_scale.csv", index=False)
    with pd.option_context("display.width", 250, "display.precision", 3, "display.max_columns", 20):
        for value in ("seconds", "cpu_seconds", "vs_smallest", "cpu_vs_smallest", "peak_rss_mib"):
            print(f"\n{value} (ratios: against the smallest small database)\n",
                  frame.pivot_table(index=["kind", "models"], columns="op", values=value))
    plot(small, args.out / "bench_scale.png", bare[1], help_cpu)


def plot(frame, out: Path, bare_cpu: float, help_cpu: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for op, rows in frame.groupby("op"):
        ax.plot(rows["models"], rows["cpu_seconds"], marker="o", label=op)  # CPU: steady on a loaded machine
    ax.axhline(help_cpu - bare_cpu, color="grey", ls=":", label="filterdb --help (beyond interpreter)")
    ax.set(xscale="log", yscale="log", xlabel="models in the database", ylabel="CPU seconds (median)",
           title="filterdb at scale: time against database size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
