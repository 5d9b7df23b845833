"""filterdb: a dataset and analysis toolkit for convolution filters.

Extract the convolution filters of trained CNNs into an HDF5 filter database and
compare adversarially robust models with normally trained ones.

``import filterdb`` is cheap: the database API (h5py, pandas) loads on first use of
``filterdb.open_database`` / ``filterdb.FilterDB``, and torch only where a model is built.
"""
from filterdb.errors import FilterDBError
from filterdb.versions import TOOL_VERSION as __version__

__all__ = ["FilterDB", "FilterDBError", "add_module", "add_state_dict", "open_database", "__version__"]


def __getattr__(name: str):
    if name in ("FilterDB", "open_database"):
        from filterdb import store
        return getattr(store, name)
    if name in ("add_module", "add_state_dict"):  # the researcher's own models (torch loads on use)
        from filterdb import own_models
        return getattr(own_models, name)
    raise AttributeError(f"module 'filterdb' has no attribute {name!r}")
