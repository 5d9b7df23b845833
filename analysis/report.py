"""``filterdb report``'s page: one self-contained HTML file (CSS inline, figures as inline PNG, no
network), readable on a laptop and printable. The pieces are :mod:`.rendering`'s, the same the
notebook shows (``Comparison._repr_html_``)."""
from __future__ import annotations

import datetime
from html import escape

import pandas as pd

from filterdb.analysis.compare import Comparison
from filterdb.analysis.rendering import (
    comparison_html,
    figure_html,
    html_table,
    plot_comparison,
    plot_divergence,
    plot_first_layer,
)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1a1a1a; max-width: 70rem;
       margin: 2rem auto; padding: 0 1.5rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; border-bottom: 1px solid #ccc;
     margin-top: 2rem; } h4 { margin-bottom: .3rem; }
table.filterdb { border-collapse: collapse; margin: .5rem 0 1rem; font-variant-numeric: tabular-nums; }
table.filterdb th, table.filterdb td { padding: .15rem .6rem; border-bottom: 1px solid #e4e4e4; text-align: right;
     white-space: nowrap; }
table.filterdb th { background: #f3f3f3; } caption { text-align: left; font-weight: 600; padding: .2rem 0; }
.scroll { overflow-x: auto; } figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: .85rem; color: #555; } .grids { display: flex; gap: 1.5rem; flex-wrap: wrap; }
.meta { color: #555; font-size: .9rem; }
@media print { body { max-width: none; margin: 0; font-size: 10pt; } h2 { break-after: avoid; }
  table, figure { break-inside: avoid; } .scroll { overflow: visible; } a { color: inherit; } }
"""


def overview_html(db) -> str:
    """The database: models by source, training, dataset and architecture; the robust models' pairs."""
    from filterdb.model_pairs import twin_pairs
    models = db.models
    parts = [f"<p>{len(models)} models, {len(db.layers)} layers.</p>"]
    counts = [pd.DataFrame({"column": c, "value": v.index.astype(str), "models": v.to_numpy()})
              for c in ("source", "training", "dataset", "architecture") if c in models
              for v in [models[c].astype(str).value_counts()]]
    if counts:
        parts.append(html_table(pd.concat(counts, ignore_index=True), "Models by column"))
    table = models.reset_index()[[c for c in ("model_id", "name", "training", "dataset", "architecture",
                                              "clean_acc", "robust_acc", "pair") if c in models.reset_index()]]
    parts.append(f'<div class="scroll">{html_table(table, "Models")}</div>')
    twins = twin_pairs(models)
    if len(twins):
        parts.append(f'<div class="scroll">{html_table(twins, "Matched pairs (twins)")}</div>')
    return "\n".join(parts)


def first_layer_grids_html(db, result: Comparison) -> str:
    """The first layer's filters of one model of each group (the first of each, by name)."""
    figures = []
    for group in (result.group_a, result.group_b):
        chosen = result.models[result.models["group"] == group].sort_values("name")
        if chosen.empty:
            continue
        mid = chosen["model_id"].iloc[0]
        layers = db.layers[db.layers["model_id"] == mid].sort_values("layer_index")
        if layers.empty:
            continue
        row = layers.iloc[0]
        name = str(chosen["name"].iloc[0])
        fig = plot_first_layer(db.read_layer(row), int(row["out_channels"]), f"{group}: {name}, {row['name']}")
        figures.append(figure_html(fig, f"First layer of {name} ({group}): {row['name']}, {row['kernel']}"))
    return f'<div class="grids">{"".join(figures)}</div>'


def report_html(db, path_label: str, result: Comparison | None = None, depth: Comparison | None = None) -> str:
    """The page: the overview; with a comparison ``result`` its tables, with ``depth`` (the same groups
    by depth deciles) metrics and divergence by depth with their nulls, and the first-layer grids."""
    title = "filterdb report" + (f": {result.group_a} vs {result.group_b}" if result is not None else "")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    from filterdb.versions import TOOL_VERSION
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="meta">Database {escape(path_label)}; written {when} by filterdb {escape(TOOL_VERSION)}.</p>',
            "<h2>Overview</h2>", overview_html(db)]
    if result is not None:
        body += ["<h2>Comparison</h2>", f'<div class="scroll">{comparison_html(result)}</div>']
    if depth is not None:
        body += ["<h2>By depth</h2>",
                 figure_html(plot_comparison(depth), "Metrics by depth: mean ± std over models of each group, "
                                                     "per depth decile (first layer as 0)")]
        if len(depth.divergence):
            body.append(figure_html(plot_divergence(depth), "Divergence by depth, with its permutation nulls"))
        body.append(f'<div class="scroll">{comparison_html(depth)}</div>')
    if result is not None:
        body += ["<h2>First-layer filters</h2>", first_layer_grids_html(db, result)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")
