"""Benchmark: extracting a WRN-28-10 into the database vs np.save; reading it back vs np.load.

Targets (issue 2): extraction <= 2x the time of np.save of the same float32 array;
reading a model's filters back >= half the speed of np.load. Run by hand:

    python bench/bench_store.py [--repeat 5] [--dir /tmp/bench-store]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from filterdb.compat import import_robustbench
from filterdb.extract import conv_modules, execution_order, extract_members
from filterdb.ids import model_id
from filterdb.store import FilterDB


def wrn_28_10() -> torch.nn.Module:
    import_robustbench()
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet
    torch.manual_seed(0)
    return WideResNet(depth=28, widen_factor=10).eval()


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-store-"))
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    model = wrn_28_10()
    layers = extract_members([model], (3, 32, 32))
    array = np.concatenate([l.filters() for l in layers if l.kernel == "3x3"])
    print(f"WRN-28-10: {array.shape[0]:,} 3x3 filters, {array.nbytes / 2**20:.0f} MiB")

    npy = work / "filters.npy"
    t_save = timed(lambda: np.save(npy, array), args.repeat)
    t_load = timed(lambda: np.load(npy), args.repeat)

    db_dir = work / "db"

    mid = model_id("bench", "wrn-28-10")

    def timed_adds(db: FilterDB) -> float:
        times = []
        for _ in range(args.repeat):
            if db.has_model(mid):
                db.remove_model(mid)
            t0 = time.perf_counter()
            db.add_module(model, source="bench", name="wrn-28-10", input_shape=(3, 32, 32))
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    # Into an open database (as in a build), and as a one-off (open, add, close).
    shutil.rmtree(db_dir, ignore_errors=True)
    with FilterDB.open(db_dir, "a") as db:
        t_extract = timed_adds(db)

    def one_off():
        shutil.rmtree(db_dir, ignore_errors=True)
        with FilterDB.open(db_dir, "a") as db:
            db.add_module(model, source="bench", name="wrn-28-10", input_shape=(3, 32, 32))

    t_one_off = timed(one_off, args.repeat)
    t_forward = timed(lambda: execution_order(model, [m for _, m in conv_modules(model)], (3, 32, 32)), args.repeat)
    with FilterDB.open(db_dir, "r") as db:
        back = db.read_model(mid)
        assert np.array_equal(back, array)
        t_read = timed(lambda: db.read_model(mid), args.repeat)
        t_vds = timed(lambda: db.filters("3x3")[()], args.repeat)

    mb = array.nbytes / 2**20
    print(f"np.save               {t_save:7.3f} s  ({mb / t_save:7.0f} MiB/s)")
    print(f"extract into database {t_extract:7.3f} s  ratio to np.save {t_extract / t_save:5.2f}  (target <= 2)")
    print(f"  of which forward pass {t_forward:5.3f} s  (execution order); without it: ratio "
          f"{(t_extract - t_forward) / t_save:5.2f}")
    print(f"open + extract + close {t_one_off:6.3f} s  ratio to np.save {t_one_off / t_save:5.2f}")
    print(f"np.load               {t_load:7.3f} s  ({mb / t_load:7.0f} MiB/s)")
    print(f"read model back       {t_read:7.3f} s  speed ratio to np.load {t_load / t_read:5.2f}  (target >= 0.5)")
    print(f"read via master VDS   {t_vds:7.3f} s  speed ratio to np.load {t_load / t_vds:5.2f}")
    if args.dir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
