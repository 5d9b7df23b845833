"""What checking a model's shard before skipping it costs a build: ``plan_build`` over 1,000 models already present.

Run by hand::

    python bench/bench_skip_check.py                  # 1,000 small models, 5 repeats
    python bench/bench_skip_check.py --models 100 --repeat 3

The database is built once under ``--dir`` (kept for reruns) through the real writer, with
``bench/bench_scale.py``'s synthetic models (4 convolutions each). In one process, one writer
open, ``--repeat`` times each (median CPU seconds, page cache warm after the first round):

* ``no check``: what a build did before it checked anything, ``has_model`` per spec;
* ``cheap check``: ``plan_build`` as ``filterdb build`` runs it (each shard opened, its size,
  model id and recorded ``shard_digest`` against the master's index);
* ``tables``: what the cheap check would cost if it also read each shard's tables and checked
  them against their digest (``read_verified_shard``, what the writer's open does for a shard
  changed since the master);
* ``--verify``: ``plan_build(verify=True)``, each shard read whole, tables and filters checked.

The ratios are against ``no check`` of the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/filterdb-bench-skip-check"))
    args = parser.parse_args()

    import bench_scale

    from filterdb.build import plan_build
    from filterdb.shards import read_verified_shard
    from filterdb.sources.base import ModelSpec
    from filterdb.store import FilterDB

    db_dir = args.dir / f"small-{args.models}"
    bench_scale.build(db_dir, "small", args.models)
    specs = [ModelSpec("bench", f"small-{i:05d}") for i in range(args.models)]

    def no_check(db):
        return [spec for spec in specs if not db.has_model(spec.model_id)]

    def tables(db):
        for spec in specs:
            read_verified_shard(db.shard_path(spec.model_id))
        return no_check(db)

    cases = {"no check": no_check, "cheap check": lambda db: plan_build(db, specs)[1], "tables": tables,
             "--verify": lambda db: plan_build(db, specs, verify=True)[1]}
    times: dict[str, list[float]] = {name: [] for name in cases}
    with FilterDB.open(db_dir, "a") as db:
        for _ in range(args.repeat):
            for name, plan in cases.items():
                c0 = time.process_time()
                todo = plan(db)
                times[name].append(time.process_time() - c0)
                assert todo == [], f"{name}: {len(todo)} model(s) to do in an intact database"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, load {os.getloadavg()[0]:.2f}, "
          f"{args.models} models present, median of {args.repeat}")
    base = statistics.median(times["no check"])
    print("| plan_build | CPU s | per model | vs no check |\n|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.4f} | {median / args.models * 1e3:.3f} ms | {median / base:.0f}x |")


if __name__ == "__main__":
    main()
