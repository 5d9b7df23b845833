"""Read a DataFrame that pandas wrote with ``DataFrame.to_hdf`` (fixed format), with h5py and
without unpickling arbitrary objects.

pandas' fixed format is plain HDF5 (written through PyTables). The frame is a group with the
attributes ``pandas_type = "frame"``, ``nblocks`` and ``axis1_variety`` ("multi" for a
MultiIndex, "regular" otherwise), holding:

- ``axis0``: the column names;
- ``axis1_level{i}`` (the values of index level i, its name in the attribute ``name``) and
  ``axis1_label{i}`` (the codes of each row into them, -1 for a missing value); a plain
  index is ``axis1`` itself;
- ``block{j}_items`` (the columns of block j) and ``block{j}_values``: a numeric array, or for
  object columns (strings, mixed values) a PyTables VLARRAY holding *one pickle* of the
  block's whole object array. The attribute ``transposed`` says the array is stored rows x
  columns.

Unpickling executes whatever the pickle names, so a downloaded file could run code on
``pd.read_hdf``. :class:`RestrictedUnpickler` admits only what an object array of builtin
values needs (numpy's array and scalar reconstruction, ``_codecs.encode`` of protocol 2
bytes); any other global is replaced by an inert placeholder that is never called, and the
cell where it ends up is reported by column and row.
"""
from __future__ import annotations

import importlib
import io
import math
import pickle
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from filterdb.errors import FilterDBError

_numpy_scalar = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core")  # numpy 2; 1.x: numpy.core
                                        else "numpy.core.multiarray").scalar

_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_SAFE_DTYPE_KINDS = "biufUSO"  # bool, int, uint, float, str, bytes (scalar payloads), object (the array)


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as pickle protocol 2 uses it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError("_codecs.encode with anything but a latin-1 string")
    return text.encode("latin1")


def _safe_dtype(*args):
    dtype = np.dtype(*args[:1])
    if dtype.kind not in _SAFE_DTYPE_KINDS or dtype.fields is not None:
        raise pickle.UnpicklingError(f"numpy dtype {dtype} is not a plain number, string or object dtype")
    return np.dtype(*args)


def _safe_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _SAFE_DTYPE_KINDS:
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r}")
    return _numpy_scalar(dtype, data) if data is not None else _numpy_scalar(dtype)


def _safe_reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"array reconstruction of {cls!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


class Refused:
    """Stands for a global that the restricted unpickler refused: constructing it runs nothing."""

    global_name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for pandas' pickled object blocks that admits only builtin values.

    Allowed: the opcodes for str, int, float, bool and None (they need no global) and numpy's
    ``ndarray``/``dtype``/``_reconstruct``/``scalar`` for the array that holds them (checked:
    plain dtypes only). Every other global becomes a :class:`Refused` placeholder class, so
    the pickle loads without calling it and the caller can say which cell held it.
    """

    def find_class(self, module: str, name: str):
        if module in _NUMPY_CORE and name == "_reconstruct":
            return _safe_reconstruct
        if module in _NUMPY_CORE and name == "scalar":
            return _safe_scalar
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return _safe_dtype
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        return type("Refused", (Refused,), {"global_name": f"{module}.{name}"})

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


def builtin_value(value):
    """A cell of an object block as a builtin (str, bool, int, float, None), or raise ``TypeError``."""
    if value is None or type(value) in (str, bool, int, float):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, Refused):
        raise TypeError(f"a pickled {type(value).global_name} object")
    raise TypeError(f"a {type(value).__module__}.{type(value).__qualname__} value")


def _decode(values: np.ndarray, encoding: str) -> list:
    return [v.decode(encoding) if isinstance(v, bytes) else v for v in values.tolist()]


def _str_attr(node, name: str) -> str:
    value = node.attrs.get(name, b"")
    return value.decode() if isinstance(value, bytes) else str(value)


def _index_values(node: h5py.Dataset, encoding: str) -> np.ndarray | list:
    kind = _str_attr(node, "kind")
    if node.attrs.get("CLASS") == b"VLARRAY":
        raise FilterDBError(f"{node.file.filename}:{node.name}: an index of pickled objects; filterdb reads only "
                            "integer, float and string index levels")
    values = node[()]
    if kind == "string":
        return _decode(values, encoding)
    if kind in ("integer", "float", "bool"):
        return values
    raise FilterDBError(f"{node.file.filename}:{node.name}: index level of kind {kind!r} cannot be read "
                        "(integer, float and string levels can)")


def _read_index(group: h5py.Group, encoding: str) -> pd.Index:
    variety = _str_attr(group, "axis1_variety")
    if variety == "regular":
        return pd.Index(_index_values(group["axis1"], encoding))
    if variety != "multi":
        raise FilterDBError(f"{group.file.filename}:{group.name}: row index of variety {variety!r} cannot be read")
    levels, codes, names = [], [], []
    for i in range(int(group.attrs["axis1_nlevels"])):
        level = group[f"axis1_level{i}"]
        levels.append(_index_values(level, encoding))
        codes.append(group[f"axis1_label{i}"][()].astype(np.int64))
        name = _str_attr(level, "name")
        names.append(None if name in ("", "N.") else name)  # pandas writes "N." for an unnamed level
    return pd.MultiIndex(levels=levels, codes=codes, names=names)


def _read_object_block(node: h5py.Dataset, items: list[str], n_rows: int) -> np.ndarray:
    where = f"{node.file.filename}:{node.name}"
    if node.shape != (1,):
        raise FilterDBError(f"{where}: expected one pickled array, found {node.shape[0]}")
    data = node[0].tobytes()
    try:
        array = RestrictedUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # noqa: BLE001 - a malformed or malicious pickle: say which columns
        raise FilterDBError(f"{where}: the pickled column(s) {', '.join(map(repr, items))} cannot be read safely "
                            f"({type(exc).__name__}: {exc}); filterdb reads only str, bool, int, float and None "
                            "values from pickles") from None
    if not isinstance(array, np.ndarray) or array.dtype != object:
        raise FilterDBError(f"{where}: the pickle of column(s) {', '.join(map(repr, items))} is not an object "
                            f"array but {type(array).__name__}; this is not a file pandas wrote")
    if array.ndim == 1:  # one column of an extension type (pandas 3's str): stored as it is
        array = array.reshape(1, -1)
    elif node.attrs.get("transposed"):
        array = array.T
    if array.shape != (len(items), n_rows):
        raise FilterDBError(f"{where}: pickled block of shape {array.T.shape}, expected {(n_rows, len(items))}")
    out = np.empty(array.shape, dtype=object)
    for c, column in enumerate(array):
        for r, value in enumerate(column):
            try:
                out[c, r] = builtin_value(value)
            except TypeError as exc:
                raise FilterDBError(f"{node.file.filename}: column {items[c]!r} of {node.parent.name}, row {r}: "
                                    f"refused to unpickle {exc}. filterdb reads only str, bool, int, float and None "
                                    "from pickled columns, because unpickling anything else can run code; if you "
                                    "trust the file, re-save that column as plain strings or numbers") from None
    return out


def read_fixed_frame(path: str | Path, key: str) -> pd.DataFrame:
    """The DataFrame that ``DataFrame.to_hdf(path, key)`` (fixed format) wrote, read without PyTables or pandas'
    unpickling. Object columns hold builtins (NaN as float nan); ``FilterDBError`` names the cell otherwise."""
    with h5py.File(path, "r") as f:
        if key not in f or not isinstance(f[key], h5py.Group):
            raise FilterDBError(f"{path}: no /{key} table; this is not a file in the expected layout")
        group = f[key]
        pandas_type = group.attrs.get("pandas_type", b"")
        if pandas_type != b"frame":
            kind = pandas_type.decode() if pandas_type else "not written by pandas"
            raise FilterDBError(f"{path}:/{key} is not a DataFrame in pandas' fixed format ({kind}); "
                                "write it with DataFrame.to_hdf(path, key) (format='fixed')")
        encoding = _str_attr(group, "encoding") or "UTF-8"
        columns = _decode(group["axis0"][()], encoding)
        index = _read_index(group, encoding)
        data: dict[str, np.ndarray] = {}
        for j in range(int(group.attrs["nblocks"])):
            items = _decode(group[f"block{j}_items"][()], encoding)
            node = group[f"block{j}_values"]
            if node.attrs.get("CLASS") == b"VLARRAY":
                values = _read_object_block(node, items, len(index))
            else:
                if _str_attr(node, "value_type"):  # datetime64 / timedelta64 blocks
                    raise FilterDBError(f"{path}:{node.name}: columns {items} of type {_str_attr(node, 'value_type')} "
                                        "cannot be read (numbers, booleans and strings can)")
                values = node[()]
                values = values.T if node.attrs.get("transposed") else values
            for name, column in zip(items, values):
                data[name] = column
    return pd.DataFrame({name: data[name] for name in columns}, index=index)


def is_missing(value) -> bool:
    """None or a float NaN: a missing cell of a pandas object column."""
    return value is None or (isinstance(value, float) and math.isnan(value))
