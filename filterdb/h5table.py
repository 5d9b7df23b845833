"""Tables in plain HDF5, self-describing.

A table is a group with ``encoding-type = "filterdb-table"``, ``encoding-version``,
``column-order`` and ``_index`` attributes and one 1-D dataset per column (attribute names
borrowed from anndata, whose ``read_elem`` does not read these tables: no anndata claim). Each column
carries its ``kind`` and ``description``. Strings are variable-length UTF-8, booleans
HDF5 enums (h5py reads them back as numpy bool), so h5py alone reads every table:
``{name: f["models"][name][()] for name in f["models"].attrs["column-order"]}``.
"""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd

from filterdb.schema import Column
from filterdb.versions import check_readable

TABLE_ENCODING = "filterdb-table"
TABLE_ENCODING_VERSION = "1.0"
# encoding-type -> the newest encoding-version read; the tables of files written before 2026-12-02 say
# anndata's "dataframe" 0.2.0 (same layout), and read as they are.
READABLE_TABLES = {TABLE_ENCODING: TABLE_ENCODING_VERSION, "dataframe": "0.2.0"}
_STR = h5py.string_dtype("utf-8")
_STR_TYPE = h5py.h5t.py_create(_STR, logical=True)
_SCALAR = h5py.h5s.create(h5py.h5s.SCALAR)


def table_columns(rows: list[dict], columns: tuple[Column, ...]) -> dict[str, np.ndarray]:
    """Rows (complete dicts) as one numpy array per column, in the column's dtype."""
    return {c.name: np.array([r[c.name] for r in rows], dtype=c.numpy_dtype) for c in columns}


def table_frame(data: list[dict] | dict[str, np.ndarray], columns: tuple[Column, ...],
                index: str | None = None) -> pd.DataFrame:
    """The in-memory twin of a stored table (rows or ``table_columns``): the columns and dtypes ``read_table`` returns."""
    if not isinstance(data, dict):
        data = table_columns(data, columns)
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


def write_table(parent: h5py.Group, name: str, data: list[dict] | dict[str, np.ndarray] | pd.DataFrame,
                columns: tuple[Column, ...], index: str | None = None, chunk_rows: int = 0) -> h5py.Group:
    """Write a table (rows, ``table_columns`` or a DataFrame) as a new group ``name`` of ``parent``.

    Through h5py's low-level API: a table has about a hundred datasets and attributes, and
    the high-level calls would cost more than writing the filters of a small model.
    ``chunk_rows`` > 0 makes every column chunked and extendable (``append_rows``).
    """
    table = pd.DataFrame(data, columns=[c.name for c in columns]) if isinstance(data, list) else data
    group = parent.create_group(name)
    _set_str_attr(group.id, "encoding-type", TABLE_ENCODING)
    _set_str_attr(group.id, "encoding-version", TABLE_ENCODING_VERSION)
    _set_str_attr(group.id, "column-order", [c.name for c in columns])
    _set_str_attr(group.id, "_index", index or "")
    for c in columns:
        values = np.asarray(table[c.name]) if c.name in table else np.array([], dtype=c.numpy_dtype)
        if c.kind == "str":
            column = np.array(["" if v is None else str(v) for v in values], dtype=object)
            h5type = _STR_TYPE
        else:
            column = np.ascontiguousarray(values, dtype=c.numpy_dtype)
            h5type = h5py.h5t.py_create(column.dtype, logical=True)
        if chunk_rows:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk((chunk_rows,))
            space = h5py.h5s.create_simple(column.shape, (h5py.h5s.UNLIMITED,))
            dataset = h5py.h5d.create(group.id, c.name.encode(), h5type, space, dcpl=dcpl)
        else:
            dataset = h5py.h5d.create(group.id, c.name.encode(), h5type, h5py.h5s.create_simple(column.shape))
        if len(column):
            dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, column)
        _set_str_attr(dataset, "kind", c.kind)
        _set_str_attr(dataset, "description", c.doc)
    return group


def append_rows(group: h5py.Group, data: pd.DataFrame, columns: tuple[Column, ...]) -> None:
    """Append the rows of ``data`` to a table written with ``chunk_rows`` (every column grows)."""
    if not len(data):
        return
    for c in columns:
        values = np.asarray(data[c.name])
        if c.kind == "str":
            column = np.array(["" if v is None else str(v) for v in values], dtype=object)
        else:
            column = np.ascontiguousarray(values, dtype=c.numpy_dtype)
        dataset = h5py.h5d.open(group.id, c.name.encode())
        old = dataset.shape[0]
        dataset.set_extent((old + len(column),))
        file_space = dataset.get_space()
        file_space.select_hyperslab((old,), (len(column),))
        dataset.write(h5py.h5s.create_simple(column.shape), file_space, column)


def _set_str_attr(obj, name: str, value: str | list[str]) -> None:
    """A UTF-8 string attribute (or 1-D array of them), as ``obj.attrs[name] = value`` writes it."""
    data = np.array(value, dtype=object)
    space = _SCALAR if data.ndim == 0 else h5py.h5s.create_simple(data.shape)
    h5py.h5a.create(obj, name.encode(), _STR_TYPE, space).write(data)


def read_table(group: h5py.Group, columns: tuple[Column, ...] = ()) -> pd.DataFrame:
    """A stored table as a DataFrame; ``columns`` that an older file lacks are filled with their missing value."""
    encoding = group.attrs.get("encoding-type")
    if encoding not in READABLE_TABLES:
        raise ValueError(f"{group.file.filename}:{group.name} is not a filterdb table (encoding-type {encoding!r})")
    check_readable(group.attrs.get("encoding-version", ""), READABLE_TABLES[encoding],
                   f"{group.file.filename}:{group.name}: table encoding")
    names = list(group.attrs["column-order"])
    str_columns = {name for name in names if group[name].attrs.get("kind") == "str"}
    data = {name: group[name].asstr()[()] if name in str_columns else group[name][()] for name in names}
    n_rows = len(next(iter(data.values()))) if data else 0
    for c in columns:
        if c.name not in data:
            data[c.name] = np.full(n_rows, c.missing, dtype=c.numpy_dtype)
            if c.kind == "str":
                str_columns.add(c.name)
    return _frame(data, str_columns, group.attrs.get("_index", "") or None)
