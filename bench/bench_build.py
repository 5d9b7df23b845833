"""Build throughput: models per minute of ``filterdb build --leaderboard linf-cifar10 --offline`` with --jobs 1 and 2.

Random-weight WRN-28-10 checkpoints (36.5M parameters, 146 MB each) of real
linf-cifar10 ids are written once to robustbench's cache layout; then the real CLI
builds them into a fresh database per --jobs setting, in a subprocess, timed from
start to exit (interpreter start and imports included, as a user sees it).

    python bench/bench_build.py [--models 6] [--jobs 1 2] [--workdir /tmp/filterdb-bench-build]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from filterdb.sources.robustbench import weight_files, zoo_entry

# linf-cifar10 ids whose constructor is a WideResNet-28-10 (robustbench's WideResNet or DMWideResNet)
WRN_28_10 = ["Standard", "Carmon2019Unlabeled", "Sehwag2020Hydra", "Wang2020Improving", "Hendrycks2019Using",
             "Gowal2020Uncovering_28_10_extra", "Rebuffi2021Fixing_28_10_cutmix_ddpm", "Rade2021Helper_ddpm",
             "Gowal2021Improving_28_10_ddpm_100m", "Zhang2020Geometry"]


def write_checkpoints(model_dir: Path, names: list[str]) -> None:
    for seed, name in enumerate(names):
        path = weight_files(model_dir, "cifar10", "Linf", name, 1)[0]
        if path.is_file():
            continue
        torch.manual_seed(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(zoo_entry("cifar10", "Linf", name)["model"]().state_dict(), path)


def timed_build(model_dir: Path, db: Path, names: list[str], jobs: int) -> float:
    shutil.rmtree(db, ignore_errors=True)
    models = [arg for name in names for arg in ("--models", name)]
    command = [sys.executable, "-c", "from filterdb.cli import main; main()", "build", "--leaderboard",
               "linf-cifar10", *models, "--offline", "--model-dir", str(model_dir), "--db", str(db),
               "--jobs", str(jobs)]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or f"{len(names)} added" not in done.stderr:
        raise SystemExit(f"build failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=6, help=f"checkpoints to build (at most {len(WRN_28_10)})")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/filterdb-bench-build"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_build.json")
    args = parser.parse_args()
    names = WRN_28_10[:args.models]
    model_dir = args.workdir / "models"
    write_checkpoints(model_dir, names)
    results = {"models": len(names), "architecture": "WideResNet-28-10", "cpus": os.cpu_count(),
               "load_average_at_start": os.getloadavg()[0], "runs": []}
    for jobs in args.jobs:
        seconds = timed_build(model_dir, args.workdir / f"db-jobs{jobs}", names, jobs)
        run = {"jobs": jobs, "seconds": round(seconds, 2), "models_per_minute": round(60 * len(names) / seconds, 2)}
        results["runs"].append(run)
        print(f"--jobs {jobs}: {len(names)} models in {seconds:.1f} s = {run['models_per_minute']:.2f} models/min",
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"load average (1 min) at start {results['load_average_at_start']:.1f} on {results['cpus']} CPUs; "
          f"written to {args.out}")


if __name__ == "__main__":
    main()
