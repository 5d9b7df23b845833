import os
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

# .ci/run sets this to the FILTERDB_HOME of the main job it has just run (`filterdb demo`): the
# test run's demo database is then built from that job's freshly trained checkpoints instead of
# training the 16 pairs a second time.
REUSED_DEMO_HOME = os.environ.get("FILTERDB_TEST_DEMO_HOME")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own FILTERDB_HOME: tests never touch the user's cache or the network."""
    home = tmp_path_factory.mktemp("filterdb-home")
    monkeypatch.setenv("FILTERDB_HOME", str(home))
    monkeypatch.delenv("FILTERDB_DB", raising=False)
    monkeypatch.delenv("FILTERDB_MODEL_DIR", raising=False)
    return home


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A FILTERDB_HOME holding the real demo: trained checkpoints and the demo database (built once)."""
    from filterdb import paths
    from filterdb.build import build
    from filterdb.store import FilterDB
    from filterdb.training.demo import demo_specs

    home = tmp_path_factory.mktemp("demo-home")
    if REUSED_DEMO_HOME and (Path(REUSED_DEMO_HOME) / "demo-checkpoints").is_dir():
        shutil.copytree(Path(REUSED_DEMO_HOME) / "demo-checkpoints", home / "demo-checkpoints")
    with FilterDB.open(home / "demo-db", "a") as db:
        report = build(db, demo_specs(home / "demo-checkpoints"), show_progress=False)
    assert not report.failed, report.to_frame()
    assert paths.demo_db_path().name == "demo-db"
    return home


@pytest.fixture
def demo_db(demo_home, tmp_path) -> Path:
    """A private copy of the demo database (tests may change it)."""
    copy = tmp_path / "demo-db"
    shutil.copytree(demo_home / "demo-db", copy)
    return copy
