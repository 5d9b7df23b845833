import os

import pytest
import torch

# Tests never touch the user's cache or the network.
os.environ.setdefault("FILTERDB_HOME", "/tmp/filterdb-tests-home-unused")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("filterdb-home")
    monkeypatch.setenv("FILTERDB_HOME", str(home))
    monkeypatch.delenv("FILTERDB_DB", raising=False)
    monkeypatch.delenv("FILTERDB_MODEL_DIR", raising=False)
    return home
