"""filterdb: a dataset and analysis toolkit for convolution filters.

Extract the convolution filters of trained CNNs into an HDF5 filter database and
compare adversarially robust models with normally trained ones.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("filterdb")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from filterdb.errors import FilterDBError  # noqa: E402
from filterdb.store import FilterDB, open_database  # noqa: E402

__all__ = ["FilterDB", "FilterDBError", "open_database", "__version__"]
