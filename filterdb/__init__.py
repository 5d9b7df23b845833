"""filterdb: a dataset and analysis toolkit for convolution filters.

Extract the convolution filters of trained CNNs into an HDF5 filter database and
compare adversarially robust models with normally trained ones.

``import filterdb`` is cheap: the database API (h5py, pandas) loads on first use of
``filterdb.open_database`` / ``filterdb.FilterDB``, and torch only where a model is built.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("filterdb")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from filterdb.errors import FilterDBError  # noqa: E402

__all__ = ["FilterDB", "FilterDBError", "open_database", "__version__"]


def __getattr__(name: str):
    if name in ("FilterDB", "open_database"):
        from filterdb import store
        return getattr(store, name)
    raise AttributeError(f"module 'filterdb' has no attribute {name!r}")
