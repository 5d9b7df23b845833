"""Default locations. Everything lives under FILTERDB_HOME (default ~/.cache/filterdb)."""
from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("FILTERDB_HOME", Path.home() / ".cache" / "filterdb")).expanduser()


def default_db_path() -> Path:
    """The database that ``build``, ``info``, ``metrics`` and ``compare`` use without --db: $FILTERDB_DB or $FILTERDB_HOME/db."""
    return Path(os.environ["FILTERDB_DB"]).expanduser() if "FILTERDB_DB" in os.environ else home() / "db"


def demo_db_path() -> Path:
    """The database that ``filterdb demo`` builds and the figures read by default: $FILTERDB_HOME/demo-db."""
    return home() / "demo-db"


def demo_checkpoint_dir() -> Path:
    """Where the demo leaderboard's trained checkpoints are cached."""
    return home() / "demo-checkpoints"


def robustbench_model_dir() -> Path:
    """robustbench's model_dir (weights cache): $FILTERDB_MODEL_DIR or $FILTERDB_HOME/models."""
    return Path(os.environ["FILTERDB_MODEL_DIR"]).expanduser() if "FILTERDB_MODEL_DIR" in os.environ else home() / "models"
