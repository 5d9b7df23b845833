"""Tables in plain HDF5, in anndata's self-describing style.

A table is a group with ``encoding-type = "dataframe"``, ``encoding-version``,
``column-order`` and ``_index`` attributes and one 1-D dataset per column. Each column
carries its ``kind`` and ``description``. Strings are variable-length UTF-8, booleans
HDF5 enums (h5py reads them back as numpy bool), so h5py alone reads every table:
``{name: f["models"][name][()] for name in f["models"].attrs["column-order"]}``.
"""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd

from filterdb.schema import Column

TABLE_ENCODING = "dataframe"
TABLE_ENCODING_VERSION = "0.2.0"
_STR = h5py.string_dtype("utf-8")


def table_frame(rows: list[dict], columns: tuple[Column, ...], index: str | None = None) -> pd.DataFrame:
    """The in-memory twin of a stored table: the same columns and dtypes that ``read_table`` returns."""
    data = {c.name: np.array([r[c.name] for r in rows], dtype=c.numpy_dtype) for c in columns}
    return _frame(data, {c.name for c in columns if c.kind == "str"}, index)


def _frame(data: dict[str, np.ndarray], str_columns: set[str], index: str | None) -> pd.DataFrame:
    """A DataFrame with strings as object columns (pandas 3 would infer its own string dtype)."""
    frame = pd.DataFrame(data)
    for name in str_columns:
        frame[name] = frame[name].astype(object)
    if index:
        frame = frame.set_index(index, drop=False)
        frame.index.name = None
    return frame


def write_table(parent: h5py.Group, name: str, rows: list[dict] | pd.DataFrame, columns: tuple[Column, ...],
                index: str | None = None) -> h5py.Group:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows), columns=[c.name for c in columns])
    group = parent.create_group(name)
    group.attrs["encoding-type"] = TABLE_ENCODING
    group.attrs["encoding-version"] = TABLE_ENCODING_VERSION
    group.attrs["column-order"] = [c.name for c in columns]
    group.attrs["_index"] = index or ""
    for c in columns:
        values = frame[c.name].to_numpy() if c.name in frame else np.array([], dtype=c.numpy_dtype)
        if c.kind == "str":
            data = np.array(["" if v is None else str(v) for v in values], dtype=object)
            ds = group.create_dataset(c.name, data=data, dtype=_STR)
        else:
            ds = group.create_dataset(c.name, data=np.asarray(values, dtype=c.numpy_dtype))
        ds.attrs["kind"] = c.kind
        ds.attrs["description"] = c.doc
    return group


def read_table(group: h5py.Group) -> pd.DataFrame:
    if group.attrs.get("encoding-type") != TABLE_ENCODING:
        raise ValueError(f"{group.file.filename}:{group.name} is not a filterdb table (no encoding-type 'dataframe')")
    names = list(group.attrs["column-order"])
    str_columns = {name for name in names if group[name].attrs.get("kind") == "str"}
    data = {name: group[name].asstr()[()] if name in str_columns else group[name][()] for name in names}
    return _frame(data, str_columns, group.attrs.get("_index", "") or None)
