"""Benchmark: extracting a WRN-28-10 into the database vs np.save; reading it back vs np.load.

Targets: extraction <= 2x the time of np.save of the same float32 array;
reading a model's filters back >= half the speed of np.load. Run by hand:

    python bench/bench_store.py [--repeat 7] [--sustained 6] [--dir /tmp/bench-store]

Extraction is timed as a build does it: inside ``FilterDB.batch`` (forward pass, checks,
the model's shard; the master file is rewritten once per interval), and also as a single
``add_module`` that rewrites the master, and as open + add + close. Writes land in the
page cache, whose state decides their speed (on a VM, also whether the host must hand
over fresh pages): every timed write (ours and np.save's) starts after ``os.sync()``
with the previous file deleted, and the two alternate, so both meet the same conditions;
the ratio is the median of the per-round ratios. ``--sustained N`` also writes
N distinct models back to back with no sync in between, against N distinct np.save
files: the throughput of a long build, once the kernel writes dirty pages back to disk.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from filterdb.build import add_module
from filterdb.compat import import_robustbench
from filterdb.extract import conv_modules, execution_order, extract_members
from filterdb.ids import model_id
from filterdb.store import FilterDB, open_database


def wrn_28_10() -> torch.nn.Module:
    import_robustbench()
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet
    torch.manual_seed(0)
    return WideResNet(depth=28, widen_factor=10).eval()


def alternated(fns: dict, repeat: int, before: dict) -> dict[str, list[float]]:
    """Wall times of each of ``fns`` over ``repeat`` rounds, taking turns; ``before[name]`` runs untimed first."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            before[name]()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def timed(fn, repeat: int, before=None) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs; ``before`` runs untimed ahead of each."""
    times = []
    for _ in range(repeat):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sustained", type=int, default=6, help="distinct models for the sustained run (0: skip)")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-store-"))
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    model = wrn_28_10()
    layers = extract_members([model], (3, 32, 32))
    array = np.concatenate([layer.filters() for layer in layers if layer.kernel == "3x3"])
    print(f"WRN-28-10: {array.shape[0]:,} 3x3 filters, {array.nbytes / 2**20:.0f} MiB")

    npy = work / "filters.npy"
    db_dir = work / "db"
    mid = model_id("bench", "wrn-28-10")

    def clean_npy():
        npy.unlink(missing_ok=True)
        os.sync()

    np.save(npy, array)
    t_load = timed(lambda: np.load(npy), args.repeat)

    def add(db: FilterDB, name: str = "wrn-28-10") -> None:
        add_module(db, model, source="bench", name=name, input_shape=(3, 32, 32))

    def one_off():
        with FilterDB.open(db_dir, "a") as db:
            add(db)

    def clean_db():
        shutil.rmtree(db_dir, ignore_errors=True)
        os.sync()

    shutil.rmtree(db_dir, ignore_errors=True)
    with FilterDB.open(db_dir, "a") as db:
        def clean_model():
            if db.has_model(mid):
                db.remove_model(mid)
            os.sync()

        with db.batch(max_delay=3600):
            batched = alternated({"save": lambda: np.save(npy, array), "add": lambda: add(db)}, args.repeat,
                                 {"save": clean_npy, "add": clean_model})
        single = alternated({"save": lambda: np.save(npy, array), "add": lambda: add(db)}, args.repeat,
                            {"save": clean_npy, "add": clean_model})
    one_offs = alternated({"save": lambda: np.save(npy, array), "add": one_off}, args.repeat,
                          {"save": clean_npy, "add": clean_db})

    def ratio(times: dict) -> float:
        return statistics.median(a / s for a, s in zip(times["add"], times["save"]))

    t_save = statistics.median(batched["save"])
    t_extract, t_single, t_one_off = (statistics.median(t["add"]) for t in (batched, single, one_offs))
    t_forward = timed(lambda: execution_order(model, [m for _, m in conv_modules(model)], (3, 32, 32)), args.repeat)
    with open_database(db_dir) as db:
        back = db.read_model(mid)
        assert np.array_equal(back, array)
        t_read = timed(lambda: db.read_model(mid), args.repeat)
        t_vds = timed(lambda: db.filters("3x3")[()], args.repeat)

    mb = array.nbytes / 2**20
    print(f"np.save                {t_save:7.3f} s  ({mb / t_save:6.0f} MiB/s)")
    print(f"extract into database  {t_extract:7.3f} s  ratio to np.save {ratio(batched):5.2f}  "
          f"(target <= 2; as a build does it)")
    print(f"  of which forward pass {t_forward:6.3f} s  (execution order, convolution arithmetic skipped)")
    print(f"single add_module      {t_single:7.3f} s  ratio to np.save {ratio(single):5.2f}  (also rewrites the master)")
    print(f"open + add + close     {t_one_off:7.3f} s  ratio to np.save {ratio(one_offs):5.2f}")
    print(f"np.load                {t_load:7.3f} s  ({mb / t_load:6.0f} MiB/s)")
    print(f"read model back        {t_read:7.3f} s  speed ratio to np.load {t_load / t_read:5.2f}  (target >= 0.5)")
    print(f"read via master VDS    {t_vds:7.3f} s  speed ratio to np.load {t_load / t_vds:5.2f}")

    if args.sustained:
        n = args.sustained
        saves_dir = work / "saves"

        def build_n():
            with FilterDB.open(db_dir, "a") as db, db.batch():
                for i in range(n):
                    add(db, f"wrn-28-10-{i}")

        def save_n():
            saves_dir.mkdir(exist_ok=True)
            for i in range(n):
                np.save(saves_dir / f"filters-{i}.npy", array)

        def clear():  # each run starts with the other's files deleted and nothing dirty
            shutil.rmtree(db_dir, ignore_errors=True)
            shutil.rmtree(saves_dir, ignore_errors=True)
            os.sync()

        runs = alternated({"save": save_n, "add": build_n}, 3, {"save": clear, "add": clear})
        t_saves, t_build = statistics.median(runs["save"]), statistics.median(runs["add"])
        print(f"sustained, {n} distinct models (median of 3): database {t_build:6.2f} s, np.save {t_saves:6.2f} s, "
              f"ratio {ratio(runs):5.2f}  ({n * mb / t_build:5.0f} vs {n * mb / t_saves:5.0f} MiB/s)")
        clear()
    if args.dir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
