"""Checksums of the filter database: every byte a reader uses is verified before a number is computed from it.

What is recorded (all xxh3-64 digests, :data:`ALGORITHM`):

* in each shard, on ``/filters/<kernel>``: ``layer_starts`` and ``layer_digests``, the digest
  of each layer's filter bytes (little-endian float32, the layer's rows); on the root:
  ``model_id``, ``tables_digest`` (the model and layer tables) and ``shard_digest`` (a
  digest of the table digest and every layer digest: the shard's identity);
* in the master: ``/shard_files`` (``model_id``, ``size``, ``digest``: which shard file
  belongs to which model) and the root attribute ``tables_digest`` over its tables and
  that list.

Why a digest of our own rather than HDF5's fletcher32 filter: fletcher32 needs chunked
datasets, while the shards' filter datasets are contiguous so that their bytes can be written
straight to known offsets (``pwritev``) and read with one ``pread``; a per-layer digest also
names the damaged layer and lets one layer be checked without reading the rest. xxh3-64
runs at about 17 GB/s on one core here against 2.5 GB/s for ``zlib.crc32``, so checking a
read costs a few percent of the read (``bench/bench_verify.py``).

Verification happens when a shard is first opened by a reader (its identity against the
master's record) and on every read of filter bytes (the layer's digest); the tables of a
shard are verified whenever they are read, the master's tables whenever the master is opened.
"""
from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xxhash

from filterdb.errors import FilterDBError

ALGORITHM = "xxh3_64"
REPAIR_HINT = "run 'filterdb verify --repair'"
SHARD_FILES = "shard_files"


class DamagedDatabaseError(FilterDBError):
    """A file of the database does not hold what was written: its message names it and says what to run."""


def damaged(path: Path | str, what: str) -> DamagedDatabaseError:
    return DamagedDatabaseError(f"{path}: {what}; {REPAIR_HINT}")


def notice(message: str) -> None:
    """One line on stderr about a problem that was worked around (a damaged master read around or rebuilt)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def digest(data) -> int:
    """The xxh3-64 digest of a bytes-like object or a numpy array's bytes."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).data.cast("B")
    return xxhash.xxh3_64_intdigest(data)


def arrays_digest(arrays: dict[str, np.ndarray], skip: str = "digest") -> int:
    """The xxh3-64 digest of named arrays (each name, dtype, shape and bytes, in name order), the array
    named ``skip`` left out: what a file of arrays records of itself (the metrics snapshot, kept draws)."""
    hasher = xxhash.xxh3_64()
    for name in sorted(arrays):
        if name == skip:
            continue
        value = np.ascontiguousarray(arrays[name])
        hasher.update(f"{name}\x1f{value.dtype.str}\x1f{value.shape}\x1f".encode())
        hasher.update(value.data.cast("B") if value.size else b"")
    return hasher.intdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The sha256 hex digest of a file (the model table's ``weights_sha256``, a checkpoint's identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def filter_digest(filters: np.ndarray) -> int:
    """Digest of filters as stored: little-endian float32."""
    return digest(np.ascontiguousarray(filters, dtype="<f4"))


def table_digest(tables: list[tuple[Any, tuple]]) -> int:
    """Digest of tables, each a (mapping column name -> values, schema columns) pair: a DataFrame as read,
    or the column arrays as written. Strings are hashed as UTF-8 (None as ''), numbers as their dtype's bytes."""
    hasher = xxhash.xxh3_64()
    for data, columns in tables:
        for c in columns:
            values = data[c.name]
            hasher.update(c.name.encode() + b"\0")
            if c.kind == "str":
                hasher.update(_joined(values).encode("utf-8", "surrogatepass"))
            else:
                hasher.update(np.ascontiguousarray(np.asarray(values), dtype=c.numpy_dtype).tobytes())
            hasher.update(b"\x1e")
    return hasher.intdigest()


def _joined(values) -> str:
    """String values joined by \x1f (None as ''): in one C call when they are all str already."""
    try:
        return "\x1f".join(values.tolist() if hasattr(values, "tolist") else values)
    except TypeError:
        return "\x1f".join("" if v is None else str(v) for v in values)


def combine(tables: int, layer_digests: np.ndarray) -> int:
    """A shard's identity digest from its table digest and its layers' digests (in layer-table order)."""
    return digest(np.concatenate([np.array([tables], np.uint64), np.asarray(layer_digests, np.uint64)]))


# --------------------------------------------------------------------------- shards

def write_shard_digests(f: h5py.File, model_id: str, tables: int,
                        kernel_layers: dict[str, list[tuple[int, int, int]]], digests: list[int]) -> int:
    """Record a shard's digests (``kernel_layers``: kernel -> (row in the layer table, local start, local
    stop) of its layers; ``digests`` per layer-table row). Returns the shard digest."""
    for kernel, rows in kernel_layers.items():
        ds = f["filters"][kernel]
        ds.attrs["layer_starts"] = np.array([start for _, start, _ in rows], np.int64)
        ds.attrs["layer_stops"] = np.array([stop for _, _, stop in rows], np.int64)
        ds.attrs["layer_digests"] = np.array([digests[row] for row, _, _ in rows], np.uint64)
    shard = combine(tables, np.array(digests, np.uint64))
    f.attrs["integrity"] = ALGORITHM
    f.attrs["model_id"] = model_id
    f.attrs["tables_digest"] = np.uint64(tables)
    f.attrs["shard_digest"] = np.uint64(shard)
    return shard


def recorded_digests(attrs: h5py.AttributeManager) -> dict[tuple[int, int], int]:
    """(local start, local stop) -> recorded digest of each layer of one shard's ``/filters/<kernel>``
    (what ``write_shard_digests`` wrote there). Raises KeyError/ValueError where the record is missing
    or its arrays disagree in length."""
    spans = zip(attrs["layer_starts"].tolist(), attrs["layer_stops"].tolist(), strict=True)
    return dict(zip(spans, attrs["layer_digests"].tolist(), strict=True))


@dataclass(frozen=True)
class ShardIdentity:
    """What the master records of a shard file: whose it is, how big, its digest, and the digest of each
    layer's filters (in layer-table order; 0 where the shard records none)."""
    model_id: str
    size: int
    digest: int
    layer_digests: np.ndarray | None = field(default=None, compare=False)


def check_shard_tables(f: h5py.File, path: Path, models, layers, columns) -> ShardIdentity:
    """Verify a shard's tables (as read) against its recorded digests and its file name; return its identity."""
    model_columns, layer_columns = columns
    if f.attrs.get("integrity") != ALGORITHM:
        raise damaged(path, "the shard has no checksums (written by an older filterdb or not by filterdb); "
                            "re-extract that model")
    model_id = str(f.attrs["model_id"])
    if model_id != path.stem or list(models["model_id"]) != [model_id]:
        raise damaged(path, f"this file holds model {model_id}, not model {path.stem}: a stray or swapped shard")
    if int(f.attrs["tables_digest"]) != table_digest([(models, model_columns), (layers, layer_columns)]):
        raise damaged(path, f"the tables of model {model_id} do not match their checksum")
    return ShardIdentity(model_id, path.stat().st_size, int(f.attrs["shard_digest"]))


class ShardCheck:
    """The recorded digests of one open shard, checked against what a reader reads from it."""

    def __init__(self, f: h5py.File, path: Path, model_id: str, model_name: str, expected_digest: int | None):
        self.path, self.model_id, self.model_name = path, model_id, model_name
        try:
            algorithm, owner = f.attrs.get("integrity"), str(f.attrs.get("model_id", ""))
            recorded = int(f.attrs["shard_digest"]) if "shard_digest" in f.attrs else None
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise damaged(path, f"the shard's attributes cannot be read ({exc})") from None
        if algorithm != ALGORITHM:
            raise damaged(path, "the shard has no checksums (written by an older filterdb or not by filterdb); "
                                "re-extract that model")
        if owner != model_id:
            raise damaged(path, f"this file holds model {owner}, not model {model_id} ({model_name}): a swapped shard")
        if expected_digest is not None and recorded != expected_digest:
            raise damaged(path, f"the shard of model {model_id} ({model_name}) is not the one the master records")
        self._file = f
        self._fd: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._layers: dict[str, dict[tuple[int, int], int]] = {}
        self._offsets: dict[str, int | None] = {}

    def dataset(self, kernel: str) -> h5py.Dataset:
        """The shard's /filters/<kernel> (looked up once: HDF5 lookups cost more than a small layer's read)."""
        found = self._datasets.get(kernel)
        if found is None:
            found = self._datasets[kernel] = self._file["filters"][kernel]
        return found

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def raw_offset(self, dataset: h5py.Dataset, kernel: str) -> int | None:
        """The file offset of a contiguous, unfiltered little-endian float32 dataset (the shards' layout), else None."""
        if kernel not in self._offsets:
            offset = None
            try:
                plist = dataset.id.get_create_plist()
                if (plist.get_layout() == h5py.h5d.CONTIGUOUS and plist.get_nfilters() == 0
                        and dataset.dtype == np.dtype("<f4")):
                    offset = dataset.id.get_offset()
            except (OSError, ValueError, RuntimeError):
                offset = None
            self._offsets[kernel] = offset
        return self._offsets[kernel]

    def read_verified(self, dataset: h5py.Dataset, kernel: str, lo: int, hi: int,
                      layers: list[tuple[int, int, str]]) -> np.ndarray:
        """Local rows [lo, hi) as float32 (n, kh, kw), each of ``layers`` ((start, stop, name) in local rows,
        together covering the read) verified against its digest before the array is returned."""
        shape = (hi - lo, *dataset.shape[1:])
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * 4
        hashers = [(int(a - lo) * row_bytes, int(b - lo) * row_bytes, xxhash.xxh3_64()) for a, b, _ in layers]
        offset = self.raw_offset(dataset, kernel)
        n_bytes = (hi - lo) * row_bytes
        if offset is None or n_bytes == 0:
            out = np.empty(shape, np.float32)
            if len(out):
                dataset.read_direct(out, source_sel=np.s_[lo:hi])
            hash_ranges(out.data.cast("B"), 0, n_bytes, hashers)
        else:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            out = read_hashing(self._fd, offset + lo * row_bytes, shape, hashers)
        for (start, stop, name), (_, _, hasher) in zip(layers, hashers):
            self.verify_streamed(kernel, start, stop, hasher.intdigest(), name)
        return out

    def _digests(self, kernel: str) -> dict[tuple[int, int], int]:
        table = self._layers.get(kernel)
        if table is None:
            try:
                table = recorded_digests(self.dataset(kernel).attrs)
            except (OSError, KeyError, ValueError, RuntimeError) as exc:
                raise damaged(self.path, f"the {kernel} checksums of model {self.model_id} cannot be read ({exc})"
                              ) from None
            self._layers[kernel] = table
        return table

    def verify(self, kernel: str, local_start: int, filters: np.ndarray, layer_name: str) -> None:
        """Raise if ``filters`` (a whole layer, read from local row ``local_start``) is not what was written."""
        self.verify_streamed(kernel, local_start, local_start + len(filters), filter_digest(filters), layer_name)

    @staticmethod
    def hasher():
        return xxhash.xxh3_64()

    def verify_streamed(self, kernel: str, local_start: int, local_stop: int, value: int, layer_name: str) -> None:
        """Raise unless ``value`` is the recorded digest of local rows [start, stop) of ``kernel`` (one layer)."""
        if self._digests(kernel).get((int(local_start), int(local_stop))) != value:
            raise self.layer_error(layer_name)

    def layer_error(self, layer_name: str) -> DamagedDatabaseError:
        return damaged(self.path, f"the filters of model {self.model_id} ({self.model_name}), layer {layer_name} "
                                  "do not match their checksum (the file is damaged)")


def read_error(path: Path, exc: BaseException, what: str = "cannot be read") -> DamagedDatabaseError:
    """A damaged-file error for an exception HDF5 raised while reading ``path``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return damaged(path, f"{what} ({text[:160]})")


# --------------------------------------------------------------------------- the master

def write_master_records(f: h5py.File, identities: dict[str, ShardIdentity], tables: int) -> None:
    """Write ``/shard_files`` and the master's ``tables_digest`` (over ``tables``, its tables' digest, and the records)."""
    ids = sorted(identities)
    group = f.create_group(SHARD_FILES)
    group.create_dataset("model_id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
    group.create_dataset("size", data=np.array([identities[i].size for i in ids], np.int64))
    group.create_dataset("digest", data=np.array([identities[i].digest for i in ids], np.uint64))
    f.attrs["integrity"] = ALGORITHM
    f.attrs["tables_digest"] = np.uint64(_with_records(tables, identities))


def _with_records(tables: int, identities: dict[str, ShardIdentity]) -> int:
    ids = sorted(identities)
    hasher = xxhash.xxh3_64(np.array([tables], np.uint64).tobytes())
    hasher.update("\x1f".join(ids).encode())
    hasher.update(np.array([identities[i].size for i in ids], np.int64).tobytes())
    hasher.update(np.array([identities[i].digest for i in ids], np.uint64).tobytes())
    return hasher.intdigest()


def read_master_records(f: h5py.File, path: Path) -> dict[str, ShardIdentity]:
    """The shard records of an open master (unverified: :func:`check_master_tables` verifies them with the tables)."""
    try:
        group = f[SHARD_FILES]
        ids = group["model_id"].asstr()[()]
        sizes, digests = group["size"][()], group["digest"][()]
        return {str(i): ShardIdentity(str(i), int(s), int(d)) for i, s, d in zip(ids, sizes, digests, strict=True)}
    except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise read_error(path, exc, "the master's shard records cannot be read") from None


def check_master_tables(f: h5py.File, path: Path, tables: int, identities: dict[str, ShardIdentity]) -> None:
    """Raise unless the master's tables (digest ``tables``) and shard records are what was written."""
    if f.attrs.get("integrity") != ALGORITHM or "tables_digest" not in f.attrs:
        raise damaged(path, "the master has no checksums (written by an older filterdb)")
    if int(f.attrs["tables_digest"]) != _with_records(tables, identities):
        raise damaged(path, "the master's tables do not match their checksum (the file is damaged)")


def shard_listing(shard_dir: Path) -> dict[str, int]:
    """model_id (file stem) -> size of every ``*.h5`` file in the shards folder."""
    out: dict[str, int] = {}
    try:
        entries = list(os.scandir(shard_dir))
    except FileNotFoundError:
        return out
    for entry in entries:
        if entry.name.endswith(".h5") and not entry.name.startswith("."):
            try:
                out[entry.name[:-3]] = entry.stat().st_size
            except OSError:
                out[entry.name[:-3]] = -1
    return out


class MasterDamaged(DamagedDatabaseError):
    """The master file cannot be trusted; the shards (the commit point) can rebuild it."""


def master_state(master: Path, shard_dir: Path) -> str:
    """Compare the master's shard records with the shards folder (a listing and sizes, no shard opened).

    Returns "ok", "stale" (shards the master does not list yet, or rewritten since: a build
    killed or still running between a shard and the master) or "absent"; raises
    :class:`MasterDamaged` for a master that cannot be read, and :class:`DamagedDatabaseError`
    for a shard that the master lists but that is gone.
    """
    if not master.exists() and not master.is_symlink():
        return "absent"
    if master.is_dir():
        raise MasterDamaged(f"{master}: is a directory, not the master file; {REPAIR_HINT}")
    try:
        with h5py.File(master, "r") as f:
            records = read_master_records(f, master)
    except DamagedDatabaseError as exc:
        raise MasterDamaged(str(exc)) from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise MasterDamaged(str(read_error(master, exc, "the master cannot be opened"))) from None
    on_disk = shard_listing(shard_dir)
    missing = sorted(set(records) - set(on_disk))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DamagedDatabaseError(f"{shard_dir / (missing[0] + '.h5')}: the shard file of model(s) {shown} is missing "
                                   f"(the master lists it); {REPAIR_HINT}, then 'filterdb build' extracts it again")
    if set(on_disk) != set(records) or any(on_disk[i] != records[i].size for i in records):
        return "stale"
    return "ok"


# --------------------------------------------------------------------------- reading while hashing

MAP_MIN_BYTES = 256 << 10


def _pread_exact(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise OSError(f"the file ends {len(view)} bytes short of its filters (truncated)")
        view, offset = view[n:], offset + n


def hash_ranges(view: memoryview, lo: int, hi: int, ranges: list) -> None:
    """Feed bytes [lo, hi) of ``view`` to each (start, stop, hasher) of ``ranges`` that they overlap."""
    for start, stop, hasher in ranges:
        a, b = max(start, lo), min(stop, hi)
        if a < b:
            hasher.update(view[a:b])


def read_hashing(fd: int, offset: int, shape: tuple[int, ...], ranges: list) -> np.ndarray:
    """float32 rows of ``shape`` at file ``offset``, their bytes hashed into ``ranges`` (:func:`hash_ranges`).

    Large reads map the file (a private, copy-on-write mapping: the caller may write to the
    array, the file never changes; unmapped when the array is freed, no file descriptor kept)
    and hash the mapped pages: one pass over the page cache instead of a copy and then a
    hash, so a checked read costs about what an unchecked ``pread`` costs. Small reads (and
    systems without ``mmap`` through libc) are one ``preadv`` into a fresh array. An empty
    ``ranges`` reads without hashing.
    """
    n_bytes = int(np.prod(shape, dtype=np.int64)) * 4
    if n_bytes < MAP_MIN_BYTES or _libc is None:
        out = np.empty(shape, np.float32)
        view = out.data.cast("B")
        _pread_exact(fd, view, offset)
        hash_ranges(view, 0, n_bytes, ranges)
        return out
    if os.fstat(fd).st_size < offset + n_bytes:  # a mapping past the end would fault (SIGBUS) instead of failing
        raise OSError(f"the file ends before its filters do (truncated to {os.fstat(fd).st_size} bytes)")
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    mapping = _map_private(fd, start, offset + n_bytes - start)
    view = memoryview(mapping).cast("B")[offset - start:]
    hash_ranges(view, 0, n_bytes, ranges)
    return np.frombuffer(mapping, np.float32, count=n_bytes // 4, offset=offset - start).reshape(shape)


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map_private(fd: int, offset: int, length: int):
    """A private copy-on-write mapping of ``length`` bytes of ``fd`` at ``offset``, as a writable ctypes buffer
    that unmaps itself once nothing refers to it (Python's ``mmap.mmap`` would keep a duplicate descriptor open)."""
    address = _libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, offset)
    if address in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    buffer = (ctypes.c_char * length).from_address(address)
    weakref.finalize(buffer, _libc.munmap, address, length)
    return buffer
