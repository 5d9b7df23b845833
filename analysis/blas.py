"""numpy's BLAS threads.

The analysis' matrix products are many and small (the permutation nulls: labelings x models
blocks; the bootstrap: resamples x models), and BLAS threads cost more than they give there: on
the 2-core machine one thread halved both the CPU and the wall time of the divergence null of
1,000 models (0.46 s against 1.05-1.33 s CPU). OpenBLAS' idle threads also spin for a while after
each product, which is CPU time taken from everything else on the machine.

The ``filterdb`` console script therefore starts numpy's OpenBLAS on one thread unless the user
set ``OPENBLAS_NUM_THREADS`` (or ``GOTO_NUM_THREADS``/``OMP_NUM_THREADS``; see :mod:`filterdb.entry`).
From Python (a notebook), BLAS keeps its threads and the small products run inside
:func:`single_threaded_blas`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache


@lru_cache(maxsize=1)
def _blas_libraries() -> tuple:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # threadpoolctl comes with scikit-learn; without it, BLAS keeps its threads
        return ()
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


@contextmanager
def single_threaded_blas():
    """BLAS on one thread within the block (the BLAS libraries are looked up once per process, and not
    at all where OpenBLAS was started on one thread)."""
    if os.environ.get("OPENBLAS_NUM_THREADS") == "1":
        yield
        return
    libraries = _blas_libraries()
    before = [lib.num_threads for lib in libraries]
    for lib in libraries:
        if lib.num_threads != 1:
            lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libraries, before):
            if n != 1:
                lib.set_num_threads(n)
