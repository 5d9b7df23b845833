"""The reading interface every database shares: a directory (:class:`filterdb.reader.DatabaseReader`, and
the writer, which reads what it holds) and an export (:class:`filterdb.packed.PackedDB`).

What ``open_database`` returns for reading is a :class:`DatabaseReading`: the model and layer tables,
each layer's filters read and verified, the recorded digest of each model, and where derived data
(the metrics cache, the divergence basis) of this database lives. Everything the analysis, the
read-only commands and the figures use is here, so a caller never needs to know which kind it holds.
"""
from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from filterdb import schema


class DatabaseReading(ABC):
    """The read API of a filter database; subclasses give the tables and the filters of a layer."""

    path: Path
    mode = "r"

    @abstractmethod
    def _tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The (model table indexed by model_id, layer table) as they are now."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def read_layer(self, row: pd.Series) -> np.ndarray:
        """The filters of one layer-table row, float32 (n, kh, kw), verified against their digest."""

    @abstractmethod
    def iter_filter_chunks(self, kernel: str = "3x3", layers: pd.DataFrame | None = None,
                           chunk_rows: int = 1 << 20) -> Iterator[np.ndarray]:
        """The filters of the selected layers of one kernel size, in order, in pieces of at most ``chunk_rows``."""

    @abstractmethod
    def filters(self, kernel: str = "3x3") -> h5py.Dataset:
        """One dataset of every filter of one kernel size (read lazily; a layer's rows at [start:stop])."""

    @abstractmethod
    def shard_digest(self, model_id: str) -> str:
        """The recorded digest of a model (tables and filters): changes with any change of either."""

    @abstractmethod
    def size_on_disk(self) -> int: ...

    @property
    @abstractmethod
    def cache_dir(self) -> Path:
        """Where derived data (the metrics cache, the divergence basis) of this database lives."""

    # ------------------------------------------------------------ shared

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        models, layers = self._tables()
        return f"{type(self).__name__}({str(self.path)!r}, {len(models)} models, {len(layers)} layers)"

    @property
    def models(self) -> pd.DataFrame:
        """The model table, indexed by model_id (columns: filterdb.schema.MODEL_COLUMNS)."""
        return self._tables()[0]

    @property
    def layers(self) -> pd.DataFrame:
        """The layer table (columns: filterdb.schema.LAYER_COLUMNS); start/stop index ``filters(kernel)``."""
        return self._tables()[1]

    @property
    def kernels(self) -> list[str]:
        return sorted(self.layers["kernel"].unique(), key=lambda k: (math.prod(schema.kernel_shape(k)), k))

    def has_model(self, model_id: str) -> bool:
        return model_id in self.models.index

    def read_model(self, model_id: str, kernel: str = "3x3") -> np.ndarray:
        """Every filter of one kernel size of one model, in layer order (each layer verified)."""
        layers = self.layers
        return self.read_filters(layers[(layers["model_id"] == model_id) & (layers["kernel"] == kernel)], kernel)

    def iter_layers(self, layers: pd.DataFrame | None = None) -> Iterator[tuple[pd.Series, np.ndarray]]:
        """Yield (layer row, filters) one layer at a time, in the order of ``layers`` (default: all)."""
        frame = self.layers if layers is None else layers
        for _, row in frame.iterrows():
            yield row, self.read_layer(row)

    def read_filters(self, layers: pd.DataFrame, kernel: str = "3x3") -> np.ndarray:
        """The filters of a selection of layers of one kernel size, concatenated in the selection's order."""
        parts = list(self.iter_filter_chunks(kernel, layers))
        if not parts:
            return np.empty((0, *schema.kernel_shape(kernel)), np.float32)
        return np.concatenate(parts)

    def export(self, out: str | os.PathLike, models: list[str] | None = None, layers: pd.DataFrame | None = None,
               *, force: bool = False, selection: str = "", layer_selector: str = "") -> Path:
        """Pack the database (or the ``models`` ids, and of them the ``layers`` rows given) into one
        self-contained HDF5 file that ``open_database`` reads (:mod:`filterdb.packed`): the tables with
        the filters copied in (no virtual datasets, no shards beside it). Written under a temporary name;
        an existing file is replaced only with ``force``."""
        from filterdb.packed import write_packed
        return write_packed(self, out, models, layers, force=force, selection=selection,
                            layer_selector=layer_selector)
