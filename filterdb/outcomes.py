"""What an ingestion reports: a :class:`ModelOutcome` per model (added, skipped or failed) and the
:class:`BuildReport` that gathers them.

Every way models come in reports the same way: the build (``filterdb.build``, ``filterdb.dask_build``)
and the sources that import a published database whole (``filterdb.sources.cnn_filter_db``), so
the report lives below all of them and no source imports the build that consumes sources.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class ModelOutcome:
    key: str
    model_id: str
    status: str  # "added", "skipped" or "failed"
    n_layers: int = 0
    n_filters: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class BuildReport:
    outcomes: list[ModelOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[ModelOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([o.__dict__ for o in self.outcomes],
                            columns=["key", "model_id", "status", "n_layers", "n_filters", "seconds", "error"])
