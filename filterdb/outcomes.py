"""What an ingestion reports: a :class:`ModelOutcome` per model (added, repaired, skipped or failed) and the
:class:`BuildReport` that gathers them.

Every way models come in reports the same way: the build (``filterdb.build``, ``filterdb.dask_build``)
and the sources that import a published database whole (``filterdb.sources.cnn_filter_db``), so
the report lives below all of them and no source imports the build that consumes sources.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from filterdb.integrity import REPAIR_HINT


@dataclass
class ModelOutcome:
    key: str
    model_id: str
    status: str  # "added", "repaired" (its damaged shard extracted again), "skipped" or "failed"
    n_layers: int = 0
    n_filters: int = 0
    seconds: float = 0.0
    error: str = ""
    note: str = ""  # "repaired": the damage found in the shard it replaced


@dataclass
class BuildReport:
    outcomes: list[ModelOutcome] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)  # model_id -> the damage of its shard, found before the build

    def mark_repaired(self) -> None:
        """Models extracted again because their shard was damaged: "repaired" with the damage as the note, or
        "failed" with the damage added to the error (the damaged shard is left as it was)."""
        for outcome in self.outcomes:
            damage = self.damaged.get(outcome.model_id)
            if damage and outcome.status == "added":
                outcome.status, outcome.note = "repaired", damage.removesuffix(f"; {REPAIR_HINT}")
            elif damage and outcome.status == "failed":
                outcome.error = f"{outcome.error} (its shard stays damaged: {damage})"

    @property
    def failed(self) -> list[ModelOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([o.__dict__ for o in self.outcomes],
                            columns=["key", "model_id", "status", "n_layers", "n_filters", "seconds", "error"])
