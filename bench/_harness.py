"""What the bench scripts share: their CPU timing, and the command line of those that time a
database of their own."""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def least_cpu_seconds(run: Callable[[], object], repeats: int) -> float:
    """The least CPU time (``time.process_time``, all of the process's threads) of ``repeats`` calls of ``run``."""
    least = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        run()
        least = min(least, time.process_time() - start)
    return least


def database_bench_arguments(description: str, *, models: int, repeat: int,
                             work_prefix: str) -> tuple[argparse.Namespace, Path]:
    """``--models``, ``--repeat`` and ``--dir`` of a bench that builds the database it times, and its
    work folder: ``--dir``, else a new temporary folder named ``work_prefix...``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", type=int, default=models, help="models in the database")
    parser.add_argument("--repeat", type=int, default=repeat, help="rounds timed")
    parser.add_argument("--dir", type=Path, default=None, help="work folder [default: a new temporary one]")
    args = parser.parse_args()
    return args, args.dir or Path(tempfile.mkdtemp(prefix=work_prefix))
