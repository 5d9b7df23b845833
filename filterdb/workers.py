"""Worker processes that never outlive the build that started them.

A ``--jobs N`` build forks N workers. Each one, first thing, asks the kernel to kill it when
its parent dies (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` through ctypes; elsewhere a
thread that watches the parent's pid), and closes its inherited copy of the database's
writer lock, so that a build killed with ``kill -9`` leaves no worker writing shards and no
process holding ``.lock``: the next writer takes the lock over (the kernel releases a
``flock`` with its last holder) and removes what the killed build left half-written.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, inherited_fds: tuple[int, ...] = ()) -> None:
    """Worker initializer: exit when ``parent_pid`` exits; close ``inherited_fds`` (the parent's lock)."""
    for fd in inherited_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int, every: float = 1.0) -> None:
    while os.getppid() == parent_pid:
        time.sleep(every)
    os._exit(1)


def worker_pool(jobs: int, inherited_fds: tuple[int, ...] = ()) -> ProcessPoolExecutor:
    """A process pool whose workers die with this process (see the module docstring)."""
    return ProcessPoolExecutor(max_workers=jobs, initializer=die_with_parent, initargs=(os.getpid(), inherited_fds))
