"""The ``filterdb`` console script: the CLI, with Ctrl-C at any moment (even while the
command's modules load) ending in one line and exit code 130, and numpy's BLAS on one thread
unless the user chose (:func:`default_blas_to_one_thread`)."""
from __future__ import annotations

import os
import signal
import sys

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")  # read by OpenBLAS in this order
_IMPORT_MACHINERY = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")


def _interrupt(signum, frame) -> None:
    """SIGINT: exit at once while a module is being imported, else raise KeyboardInterrupt as usual.

    A KeyboardInterrupt raised inside an import reaches code that cannot take it: the import
    machinery's weakref callbacks swallow it ("Exception ignored", and the command then runs to
    the end with exit code 0), and torch's C++ start-up aborts on it (exit code -6). Nothing is
    written while modules load, so leaving then is safe; outside imports the command's own
    handlers clean up as they would for any KeyboardInterrupt."""
    while frame is not None:
        if frame.f_code.co_filename in _IMPORT_MACHINERY:
            os.write(2, b"interrupted\n")
            os._exit(130)
        frame = frame.f_back
    raise KeyboardInterrupt


def default_blas_to_one_thread(environ=os.environ) -> None:
    """numpy's OpenBLAS on one thread from its start, where the user has not chosen (before numpy loads).

    A thread per core costs every command at start-up: importing numpy took 0.10 s of CPU with 2
    threads against 0.05 s with one, and the idle thread then spun another 0.05 s; the analysis'
    products are small and run on one thread anyway (:mod:`filterdb.analysis.blas`). torch keeps its
    own threads (MKL and OpenMP). Worker processes inherit the setting."""
    if not any(name in environ for name in BLAS_THREAD_VARIABLES):
        environ["OPENBLAS_NUM_THREADS"] = "1"


def main() -> None:
    default_blas_to_one_thread()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the parent ignores SIGINT
        signal.signal(signal.SIGINT, _interrupt)
    try:
        from filterdb.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
