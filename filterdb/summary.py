"""What ``filterdb info`` reports about a database: totals, model counts by column, the model table.

On a terminal the model table is capped (:data:`TABLE_ROWS` rows, then "... and K more"): a
database of thousands of models is read through the counts by source, training, dataset and
architecture, and the full table goes to ``--all`` or ``--format csv|json``, which always
give every row. pandas only; printing goes through :func:`filterdb.output.emit`.
"""
from __future__ import annotations

import json
import sys
from collections import Counter

import pandas as pd

from filterdb.output import emit

INFO_COLUMNS = ["model_id", "source", "name", "dataset", "training", "architecture", "threat_model", "eps",
                "clean_acc", "robust_acc", "n_layers", "n_filters"]
COUNT_COLUMNS = ("source", "training", "dataset", "architecture")
TABLE_ROWS = 20  # model rows shown on a terminal without --all
# What a narrow terminal keeps first (filterdb.output.fit_columns); model_id leads and is always shown.
INFO_PRIORITY = ["name", "training", "architecture", "dataset", "clean_acc", "robust_acc", "eps", "threat_model",
                 "n_filters", "n_layers", "source"]
TOP_VALUES = 10  # values listed per column in the counts; the rest are summed in one row


def database_summary(db, models: pd.DataFrame | None = None) -> dict:
    """Totals of an open database, or of the rows ``models`` of its model table (``--select``): models,
    layers, filters (per kernel size), counts by column; bytes on disk always of the whole database."""
    layers = db.layers if models is None else db.layers[db.layers["model_id"].isin(models.index)]
    models = db.models if models is None else models
    per_kernel = layers.groupby("kernel")["n_filters"].sum().to_dict() if len(layers) else {}
    return {"path": str(db.path), "models": int(len(models)), "layers": int(len(layers)),
            "filters": int(layers["n_filters"].sum()) if len(layers) else 0,
            "filters_per_kernel": {k: int(v) for k, v in sorted(per_kernel.items())},
            "size_on_disk_bytes": int(db.size_on_disk()),
            "models_by": {c: value_counts(models[c]) for c in COUNT_COLUMNS}}


def value_counts(column: pd.Series) -> dict[str, int]:
    """Models per value, most frequent first, ties by value; an empty value shows as '(none)'."""
    counts = Counter(str(v) or "(none)" for v in column)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def counts_table(models_by: dict[str, dict[str, int]], top: int = TOP_VALUES) -> pd.DataFrame:
    """One row per (column, value) with its model count; beyond ``top`` values of a column, one row
    "(K more values)" with their total."""
    rows = []
    for column, counts in models_by.items():
        items = list(counts.items())
        rows += [{"column": column, "value": value, "models": n} for value, n in items[:top]]
        if len(items) > top:
            rest = items[top:]
            rows.append({"column": column, "value": f"({len(rest)} more values)", "models": sum(n for _, n in rest)})
    return pd.DataFrame(rows, columns=["column", "value", "models"])


def more_rows_line(total: int, shown: int) -> str:
    """The line under a capped table ('' when nothing was left out)."""
    if total <= shown:
        return ""
    return f"... and {total - shown} more models; use --all for every row, or --format csv / --format json"


def print_info(db, fmt: str = "table", rows: int | None = TABLE_ROWS, file=None,
               models: pd.DataFrame | None = None) -> None:
    """Print what ``filterdb info`` shows: JSON (summary + every model), CSV (every model) or tables
    on the terminal (counts, the first ``rows`` models, or all when None, kernels, totals); of the
    rows ``models`` of the model table only, when given."""
    file = file or sys.stdout
    summary = database_summary(db, models)
    models = (db.models if models is None else models)[INFO_COLUMNS].reset_index(drop=True)
    if fmt == "json":
        records = json.loads(models.to_json(orient="records"))
        file.write(json.dumps({**summary, "model_table": records}, indent=2) + "\n")
        return
    if fmt == "csv":
        emit(models, "csv", file=file)
        return
    shown = models if rows is None else models.head(rows)
    title = f"{summary['models']} models in {summary['path']}"
    if len(shown) < len(models):
        title += f" (the first {len(shown)})"
    emit(shown, "table", title=title, file=file, priority=INFO_PRIORITY)
    if more_rows_line(len(models), len(shown)):
        print(more_rows_line(len(models), len(shown)), file=file)
    if len(models):
        emit(counts_table(summary["models_by"]), "table", title="Models by column", file=file)
    kernels = pd.DataFrame({"kernel": list(summary["filters_per_kernel"]),
                            "filters": list(summary["filters_per_kernel"].values())})
    emit(kernels, "table", file=file)
    print(f"{summary['models']} models, {summary['layers']} layers, {summary['filters']} filters, "
          f"{summary['size_on_disk_bytes'] / 2**20:.1f} MiB on disk", file=file)
