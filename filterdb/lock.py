"""The writer lock: one process at a time changes a database (fcntl on ``<db>/.lock``); readers never take it."""
from __future__ import annotations

import fcntl
from pathlib import Path

from filterdb.errors import FilterDBError

LOCK_NAME = ".lock"


class WriterLock:
    """An exclusive, non-blocking lock on a database directory, released by ``release`` or process death."""

    def __init__(self, db_dir: Path):
        self.path = Path(db_dir) / LOCK_NAME
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._fh.close()
            raise FilterDBError(f"{db_dir} is being written by another filterdb process; "
                                "wait for it to finish or use another --db") from exc

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
