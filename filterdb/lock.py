"""The writer lock: one process at a time changes a database (fcntl on ``<db>/.lock``); readers never take it."""
from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from filterdb.errors import FilterDBError

LOCK_NAME = ".lock"


class WriterLock:
    """An exclusive, non-blocking lock on a database directory, released by ``release`` (or leaving
    its ``with`` block) or process death. ``busy`` is what the error tells the user to do when another
    process holds it."""

    def __init__(self, db_dir: Path, busy: str = "wait for it to finish or use another --db"):
        self.path = Path(db_dir) / LOCK_NAME
        try:
            self._fh: IO[str] | None = open(self.path, "a+")
        except OSError as exc:
            raise FilterDBError(f"{self.path}: cannot open the writer lock ({exc.strerror}); it must be a writable "
                                "file (remove what is there, or run 'filterdb verify --repair')") from None
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._fh.close()
            raise FilterDBError(f"{db_dir} is being written by another filterdb process; {busy}") from exc

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def fileno(self) -> int:
        """The lock file's descriptor (worker processes close it: a lock held by a dead build is free)."""
        if self._fh is None:
            raise FilterDBError(f"{self.path}: the writer lock was released")
        return self._fh.fileno()

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
