"""The reader of a database directory: what ``open_database`` returns for a directory. It never writes.

It reads the tables from the master file and verifies them against the digests the master records;
each layer's filters come from its model's shard (:mod:`filterdb.directory`). A master that does not
describe the shards on disk (a build was killed between a shard and its publish, or one is running),
a damaged master or none at all is not this class's to fix: :func:`master_condition` says which it
is, ``open_database`` decides (:mod:`filterdb.store`), and a reader opened with ``read_around`` takes
the tables from the verified shards themselves.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import pandas as pd

from filterdb import integrity, schema
from filterdb.directory import DirectoryReading
from filterdb.h5table import read_table
from filterdb.integrity import DamagedDatabaseError, MasterDamaged
from filterdb.master import (
    INDEX_COLUMNS,
    MASTER_NAME,
    MASTER_VERSION,
    SPAN_COLUMNS,
    check_tables,
    empty_frame,
    global_rows,
    is_current,
    read_layer_digests,
    read_spans,
    read_state,
)
from filterdb.shards import list_shards, read_verified_shard, shard_path


def master_condition(path: Path) -> tuple[str, str]:
    """What the master of a database directory is, read without writing: ("ok", ""), ("absent", ""),
    ("stale", "") when it does not describe the shards on disk, or ("damaged", what is wrong)."""
    master = path / MASTER_NAME
    if master.is_dir():
        return "damaged", f"{master}: is a directory, not the master file"
    if not master.exists():
        return "absent", ""
    state = read_state(path)
    if state is not None and state.version != MASTER_VERSION:
        return ("stale" if _legacy_is_stale(path) else "ok"), ""
    return ("ok" if is_current(path, state) else "stale"), ""


def _legacy_is_stale(path: Path) -> bool:
    """A format 1.0 master (no index): whether its model ids differ from the shard files on disk."""
    try:
        with h5py.File(path / MASTER_NAME, "r") as f:
            listed = set(f["models"]["model_id"].asstr()[()])
    except (OSError, KeyError):
        return True
    return set(list_shards(path)) != listed


class DatabaseReader(DirectoryReading):
    """A database directory, read only. ``read_around``: the master is unusable, the tables come from the shards.

    A master that cannot be read, or whose tables do not match their digests, is a
    :class:`filterdb.integrity.MasterDamaged` on construction."""

    def __init__(self, path: str | Path, *, read_around: bool = False):
        super().__init__(Path(path))
        self._read_around = read_around
        self._digests: dict[str, int] = {}  # model_id -> the shard digest the master (or the shard) records
        if read_around:
            self._load_from_shards()
        else:
            self._load()

    def _load(self) -> None:
        f = self._open_master()
        master = self.path / MASTER_NAME
        try:
            self._models = read_table(f["models"], schema.MODEL_COLUMNS)
            self._layers = read_table(f["layers"], schema.LAYER_COLUMNS)
            self._spans = read_spans(f) or None  # format 1.0: computed from the layers when needed
            self._layer_digests = read_layer_digests(f, len(self._layers))
            if str(f.attrs.get("encoding-version", "")) == MASTER_VERSION:
                index = read_table(f["shards"], INDEX_COLUMNS)
                check_tables(f, master, self._models, self._layers, index, read_table(f["spans"], SPAN_COLUMNS))
                self._digests = {mid: int(d, 16) for mid, d in zip(index["model_id"], index["digest"]) if d}
                self._indexed = dict(zip(index["model_id"], zip(index["size"].tolist(), index["mtime_ns"].tolist())))
        except DamagedDatabaseError as exc:
            self.close()
            raise MasterDamaged(str(exc)) from None
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
            self.close()
            raise MasterDamaged(str(integrity.read_error(master, exc, "the master cannot be read"))) from None

    def _load_from_shards(self) -> None:
        """Reading around an unusable master: the tables of every shard (each verified), in key order."""
        parts = []
        for mid in sorted(list_shards(self.path)):
            models, layers, _, identity = read_verified_shard(shard_path(self.path, mid))
            parts.append((models["key"].iloc[0], mid, models, layers, identity))
        parts.sort(key=lambda item: item[0])
        if parts:
            models = pd.concat([p[2] for p in parts])
            models.index = pd.Index(models["model_id"].to_numpy(dtype=object), dtype=object)
            layers = global_rows(pd.concat([p[3] for p in parts], ignore_index=True), {})
        else:
            models, layers = empty_frame(schema.MODEL_COLUMNS, "model_id"), empty_frame(schema.LAYER_COLUMNS)
        self._models, self._layers = models, layers
        self._digests = {p[1]: p[4].digest for p in parts}
        self._spans = None

    def _tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return self._models, self._layers

    def _offsets(self) -> dict[tuple[str, str], int]:
        return {}  # the master's /spans, read on open (``_spans``), hold them

    def _expected_digest(self, model_id: str) -> int | None:
        return self._digests.get(model_id)

    def filters(self, kernel: str = "3x3") -> h5py.Dataset:
        """The virtual dataset of all filters of one kernel size (read lazily, slice what you need)."""
        if self._read_around:
            raise integrity.damaged(self.path / MASTER_NAME, "the master file is unusable, so its virtual datasets are "
                                    "too (read_layer and read_filters read the shards)")
        return self._master_dataset(kernel)
