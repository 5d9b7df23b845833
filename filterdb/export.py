"""``filterdb export``: the database packed into one self-contained HDF5 file for publication."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from filterdb import schema
from filterdb.atomic import atomic_path, io_failure
from filterdb.errors import FilterDBError
from filterdb.h5table import write_table
from filterdb.master import DATABASE_ENCODING
from filterdb.shards import FILTERS_ENCODING, root_attrs
from filterdb.store import FilterDB


def export_database(db: FilterDB, out: str | os.PathLike, chunk_rows: int = 1 << 20) -> Path:
    """Pack the database into one self-contained HDF5 file for publication: the master's
    tables (root attributes, /models, /layers, /filters/<kernel>) with the filters copied
    in (no virtual datasets, no shards beside it). Written under a temporary name."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise FilterDBError(f"{out} is a directory; give the path of the .h5 file to write")
    try:
        with atomic_path(out) as tmp, h5py.File(tmp, "w", libver="latest") as f:
            root_attrs(f, DATABASE_ENCODING)
            f.attrs["n_models"] = len(db.models)
            f.attrs["packed"] = True
            write_table(f, "models", db.models, schema.MODEL_COLUMNS, index="model_id")
            write_table(f, "layers", db.layers, schema.LAYER_COLUMNS)
            group = f.create_group("filters")
            layers = db.layers.sort_values("start", kind="stable")
            for kernel in db.kernels:
                rows = layers[layers["kernel"] == kernel]
                kh, kw = schema.kernel_shape(kernel)
                target = group.create_dataset(kernel, shape=(int(rows["stop"].max()), kh, kw), dtype=np.float32)
                target.attrs["encoding-type"] = FILTERS_ENCODING
                target.attrs["encoding-version"] = schema.FORMAT_VERSION
                at = 0
                for chunk in db.iter_filter_chunks(kernel, rows, chunk_rows):  # through the shards, verified
                    target[at:at + len(chunk)] = chunk
                    at += len(chunk)
    except (OSError, RuntimeError) as exc:
        raise FilterDBError(f"{out}: cannot write the export ({io_failure(exc)}); choose a writable path") from None
    return out
