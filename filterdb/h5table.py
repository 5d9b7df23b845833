"""Tables in plain HDF5, self-describing.

A table is a group with ``encoding-type = "filterdb-table"``, ``encoding-version``,
``column-order`` and ``_index`` attributes and one 1-D dataset per column (attribute names
borrowed from anndata, whose ``read_elem`` does not read these tables: no anndata claim). Each column
carries its ``kind`` and ``description``. Booleans are HDF5 enums (h5py reads them back as numpy
bool). Strings are UTF-8: fixed-length (NUL-padded) while the longest value of the column takes at
most ``FIXED_STRING_BYTES`` bytes, variable-length otherwise (version 1.1; 1.0 wrote every string
column variable-length). HDF5 reads a fixed-length column in one contiguous read, a
variable-length one string by string from its heap: about 0.6 us a value, most of the time of
opening a database of 10,000 models. h5py alone reads every table either way:
``{name: f["models"][name].asstr()[()] for name in f["models"].attrs["column-order"]}``
(``asstr()`` for the columns whose ``kind`` is ``str``).
"""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd

from filterdb.schema import Column
from filterdb.versions import check_readable

TABLE_ENCODING = "filterdb-table"
TABLE_ENCODING_VERSION = "1.1"
# encoding-type -> the newest encoding-version read; the tables of files written before 2026-12-02 say
# anndata's "dataframe" 0.2.0 (the 1.0 layout), and read as they are.
READABLE_TABLES = {TABLE_ENCODING: TABLE_ENCODING_VERSION, "dataframe": "0.2.0"}
_STR = h5py.string_dtype("utf-8")
_STR_TYPE = h5py.h5t.py_create(_STR, logical=True)
_SCALAR = h5py.h5s.create(h5py.h5s.SCALAR)
FIXED_STRING_BYTES = 256  # a string column whose longest UTF-8 value is longer is stored variable-length


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
    frame = pd.DataFrame({name: pd.Series(values, dtype=object) if name in str_columns else values
                          for name, values in data.items()})
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
        _write_column(group, c, _stored(c, values), chunk_rows)
    return group


def _stored(column: Column, values: np.ndarray) -> np.ndarray:
    """A column's values as written: strings as UTF-8 bytes (fixed-width ``S`` while short enough, else
    objects), everything else in the column's dtype."""
    if column.kind != "str":
        return np.ascontiguousarray(values, dtype=column.numpy_dtype)
    return _stored_bytes(_encode(values))


def _encode(values) -> list[bytes]:
    return [("" if v is None else str(v)).encode("utf-8", "surrogatepass") for v in values]


def _stored_bytes(encoded: list[bytes]) -> np.ndarray:
    width = max(map(len, encoded), default=0)
    if width <= FIXED_STRING_BYTES:
        return np.array(encoded, dtype=f"S{max(width, 1)}")
    return np.array([b.decode("utf-8", "surrogatepass") for b in encoded], dtype=object)  # variable-length: str


def _h5type(stored: np.ndarray):
    if stored.dtype.kind == "S":  # fixed-length UTF-8, NUL-padded
        return h5py.h5t.py_create(h5py.string_dtype("utf-8", stored.dtype.itemsize), logical=True)
    if stored.dtype == object:
        return _STR_TYPE
    return h5py.h5t.py_create(stored.dtype, logical=True)


def _write_column(group: h5py.Group, c: Column, stored: np.ndarray, chunk_rows: int) -> None:
    h5type = _h5type(stored)
    if chunk_rows:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((chunk_rows,))
        space = h5py.h5s.create_simple(stored.shape, (h5py.h5s.UNLIMITED,))
        dataset = h5py.h5d.create(group.id, c.name.encode(), h5type, space, dcpl=dcpl)
    else:
        dataset = h5py.h5d.create(group.id, c.name.encode(), h5type, h5py.h5s.create_simple(stored.shape))
    if len(stored):
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, stored, mtype=h5type if stored.dtype.kind == "S" else None)
    _set_str_attr(dataset, "kind", c.kind)
    _set_str_attr(dataset, "description", c.doc)


def append_rows(group: h5py.Group, data: pd.DataFrame, columns: tuple[Column, ...]) -> None:
    """Append the rows of ``data`` to a table written with ``chunk_rows`` (every column grows)."""
    """A string column whose new values do not fit its fixed width is rewritten wider (or variable-length):
    rare, and it costs that one column."""
    if not len(data):
        return
    for c in columns:
        values = np.asarray(data[c.name])
        stored = _stored(c, values)
        dataset = h5py.h5d.open(group.id, c.name.encode())
        if c.kind == "str" and not _fits(dataset, stored):
            old_values = _read_bytes(group[c.name])
            chunk_rows = dataset.get_create_plist().get_chunk()[0]
            dataset.close()
            del group[c.name]
            _write_column(group, c, _stored_bytes(old_values + _encode(values)), chunk_rows)
            continue
        if c.kind == "str" and stored.dtype.kind == "S" and dataset.get_type().is_variable_str():
            stored = stored.astype(object)  # a variable-length column stays variable-length
        old = dataset.shape[0]
        dataset.set_extent((old + len(stored),))
        file_space = dataset.get_space()
        file_space.select_hyperslab((old,), (len(stored),))
        dataset.write(h5py.h5s.create_simple(stored.shape), file_space, stored,
                      mtype=_h5type(stored) if stored.dtype.kind == "S" else None)


def _fits(dataset, stored: np.ndarray) -> bool:
    """Whether string values (as ``_stored`` made them) can be written into the dataset as it is."""
    h5type = dataset.get_type()
    if h5type.is_variable_str():
        return True
    return stored.dtype.kind == "S" and stored.dtype.itemsize <= h5type.get_size()


def _read_bytes(dataset: h5py.Dataset) -> list[bytes]:
    """A string column's values as UTF-8 bytes (fixed-length: trailing NUL padding removed)."""
    return dataset[()].tolist()


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
    data = {name: _read_str(group[name]) if name in str_columns else group[name][()] for name in names}
    n_rows = len(next(iter(data.values()))) if data else 0
    for c in columns:
        if c.name not in data:
            data[c.name] = np.full(n_rows, c.missing, dtype=c.numpy_dtype)
            if c.kind == "str":
                str_columns.add(c.name)
    return _frame(data, str_columns, group.attrs.get("_index", "") or None)


def _read_str(dataset: h5py.Dataset) -> np.ndarray:
    """A string column as an object array of str: a fixed-length one in one read."""
    raw = dataset[()]
    if raw.dtype.kind == "S":
        return np.array([b.decode("utf-8", "surrogatepass") for b in raw.tolist()], dtype=object)
    return dataset.asstr()[()]
