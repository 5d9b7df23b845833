"""Streaming a large file through memory once, without the page cache (``O_DIRECT``).

Copying a file that is read once and written once (an import of tens of GB) gains nothing
from the page cache and pays for it: the kernel fills and evicts a page per 4 KiB, which
costs more CPU than the copy itself. Direct I/O moves the bytes between the disk and the
process's buffers, but needs page-aligned file offsets, lengths and memory. Here a window of
``n`` bytes at any file offset lives in a page-aligned buffer at the same offset modulo the
page size, so that its whole pages go direct and at most one partial page at each end goes
through the page cache. Where the file system refuses ``O_DIRECT`` (tmpfs, some network file
systems) everything goes through the page cache, with the same results.
"""
from __future__ import annotations

import os

import numpy as np

PAGE = 4096
_DIRECT = getattr(os, "O_DIRECT", 0)


def aligned_buffer(nbytes: int) -> np.ndarray:
    """A page-aligned uint8 buffer with room for a window of ``nbytes`` at any page offset."""
    raw = np.empty(nbytes + 3 * PAGE, np.uint8)
    shift = -raw.ctypes.data % PAGE
    return raw[shift:shift + nbytes + 2 * PAGE]


def window(buffer: np.ndarray, offset: int, nbytes: int) -> np.ndarray:
    """The bytes of ``buffer`` that stand for the file's bytes [offset, offset + nbytes)."""
    start = offset % PAGE
    return buffer[start:start + nbytes]


def _open_direct(path, flags: int) -> int | None:
    if not _DIRECT:
        return None
    try:
        return os.open(path, flags | _DIRECT)
    except OSError:
        return None


class DirectFile:
    """A file opened for reading or writing windows of an ``aligned_buffer``, direct where possible."""

    def __init__(self, path, mode: str):
        flags = os.O_RDONLY if mode == "r" else os.O_WRONLY
        self.fd = os.open(path, flags)
        self.direct = _open_direct(path, flags)

    def close(self) -> None:
        os.close(self.fd)
        if self.direct is not None:
            os.close(self.direct)

    def _whole_pages(self, offset: int, nbytes: int) -> tuple[int, int]:
        """The page-aligned part [lo, hi) of the file's bytes [offset, offset + nbytes) (lo == hi if none)."""
        lo = -(-offset // PAGE) * PAGE
        hi = (offset + nbytes) // PAGE * PAGE
        return (lo, hi) if hi > lo else (offset, offset)

    def read(self, buffer: np.ndarray, offset: int, nbytes: int) -> np.ndarray:
        """Read the file's bytes [offset, offset + nbytes) into their window of ``buffer``; return the window."""
        out = window(buffer, offset, nbytes)
        lo, hi = self._whole_pages(offset, nbytes)
        self._transfer(os.preadv, out, offset, lo, hi)
        return out

    def write(self, data: np.ndarray, offset: int) -> None:
        """Write ``data`` (a ``window`` of an aligned buffer for the file's bytes at ``offset``) there."""
        lo, hi = self._whole_pages(offset, len(data))
        self._transfer(os.pwritev, data, offset, lo, hi)

    def _transfer(self, call, data: np.ndarray, offset: int, lo: int, hi: int) -> None:
        pieces = [(offset, lo, self.fd), (lo, hi, self.direct), (hi, offset + len(data), self.fd)]
        for start, stop, fd in pieces:
            if stop <= start:
                continue
            if fd is None:
                fd = self.fd
            view = data[start - offset:stop - offset].data
            while len(view):
                try:
                    done = call(fd, [view], start)
                except OSError:
                    if fd == self.fd:
                        raise
                    os.close(fd)  # the file system takes O_DIRECT to open but not to move bytes
                    self.direct = None
                    fd = self.fd
                    continue
                if done == 0:
                    raise OSError(f"{'read' if call is os.preadv else 'write'} of {len(view)} bytes at {start} "
                                  "moved nothing: the file is shorter than its header says")
                view, start = view[done:], start + done
                if fd != self.fd and len(view) and start % PAGE:
                    fd = self.fd  # a short direct transfer left an unaligned rest
