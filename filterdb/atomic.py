"""Durable atomic file replacement: write a temporary file, fsync it, rename it into place, fsync the directory.

Every file filterdb publishes (shards, the master, the metrics cache, checkpoints,
evaluation results, exports) goes through :func:`atomic_path`, so that a crash or a power
loss leaves either the old file or the complete new one, never an empty or torn file, and
an error (a full disk included) leaves no temporary file behind.

The temporary file is ``.<name>.<pid>.tmp`` beside the target: hidden, unique per process,
and recognisable by :data:`TMP_GLOB` for cleanup after a killed process.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"
TMP_GLOB = f".*{TMP_SUFFIX}"


def temp_path(final: str | os.PathLike) -> Path:
    """The temporary name under which ``final`` is written by this process."""
    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file (or a directory's entries) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: the filesystem cannot sync this (e.g. some FUSE dirs)
            raise
    finally:
        os.close(fd)


def publish(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Make a complete temporary file ``final``: fsync it, rename it, fsync the directory."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(Path(final).parent)


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield the temporary path to write; on success publish it as ``final``; on any error remove it.

    >>> with atomic_path("out.json") as tmp:
    ...     tmp.write_text("{}")
    """
    final = Path(final)
    tmp = temp_path(final)
    try:
        yield tmp
        publish(tmp, final)
    except BaseException:
        remove_quietly(tmp)
        raise


def remove_quietly(path: str | os.PathLike) -> None:
    """Remove a temporary file if it is there; one that cannot be removed (its directory vanished, a
    directory of that name, no permission) is left, never an error on top of the one being handled."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


def io_failure(exc: BaseException) -> str:
    """A short reason for a failed write: OSError's text, or the errno text HDF5 buries in its RuntimeError."""
    text = " ".join(str(exc).split())
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
        if getattr(exc, "errno", None) == code or f"errno = {code}," in text or os.strerror(code) in text:
            return os.strerror(code)
    if isinstance(exc, OSError) and exc.strerror:
        return " ".join(str(exc.strerror).split())[:160]
    return text[:160] or type(exc).__name__


def remove_stale_temps(directory: str | os.PathLike) -> None:
    """Remove temporary files left in ``directory`` by killed processes (never complete, never published)."""
    for stale in Path(directory).glob(TMP_GLOB):
        remove_quietly(stale)  # a directory of that name, or no permission: not ours to force
