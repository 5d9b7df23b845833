"""filterdb: a dataset and analysis toolkit for convolution filters.

Extract the convolution filters of trained CNNs into an HDF5 filter database and
compare adversarially robust models with normally trained ones.

``import filterdb`` is cheap: the database API (h5py, pandas) loads on first use of
``filterdb.open_database`` / ``filterdb.FilterDB``, and torch only where a model is built.
"""
from filterdb.errors import FilterDBError

__all__ = ["FilterDB", "FilterDBError", "add_module", "add_state_dict", "open_database", "__version__"]


def __getattr__(name: str):
    if name in ("FilterDB", "open_database"):
        from filterdb import store
        return getattr(store, name)
    if name in ("add_module", "add_state_dict"):  # the researcher's own models (torch loads on use)
        from filterdb import own_models
        return getattr(own_models, name)
    if name == "__version__":  # the package metadata scan costs more than the rest of the import
        from importlib.metadata import PackageNotFoundError, version
        try:
            value = version("filterdb")
        except PackageNotFoundError:  # running from a source tree that was never installed
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module 'filterdb' has no attribute {name!r}")
