"""Filter metrics by depth: sparsity, variance entropy and orthogonality, robust vs normal.

The main figure of *Adversarial Robustness through the Lens of Convolutional Filters*
(CVPR-W 2022, Fig. 2): one row per metric, one column per dataset; the x axis is the
first convolution on its own, then the deciles of relative depth (conv_depth_norm,
right-closed, as ``compare --layer deciles``). Every 3x3 convolution counts; a model's
value in a decile pools its layers there as the paper does (``compare --aggregate
pooled``: orthogonality weighted by out_channels, variance entropy by the non-sparse
filter count, sparsity = sparse filters / filters), so each model counts once per point;
the figure says so under its legend. Markers are the mean over models, bars 95%
bootstrap intervals of it (seed 0);
lines join neighbouring deciles only (not the first layer, not over deciles without layers).
Variance entropy is the default variant ``ve_linf`` (filters scaled by their L-inf
norm, sparse filters removed).

    python figures/metrics_by_depth.py [--db DB] [--out DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _style  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from filterdb.analysis import compare_groups  # noqa: E402
from filterdb.analysis.groups import DECILE_LABELS  # noqa: E402
from filterdb.analysis.stats import mean_bootstrap_ci  # noqa: E402

NAME = "metrics_by_depth"
AGGREGATE = "pooled"
AGGREGATE_NOTE = ("each model's value per depth group pools its 3x3 layers as the paper does: orthogonality weighted "
                  "by out_channels, variance entropy by non-sparse filters, sparsity over filters")
METRICS = {"sparsity": "Sparsity\n(share of near-zero filters)",
           "ve_linf": "Variance entropy\n(filter diversity)",
           "orthogonality": "Orthogonality\n(of output channels)"}


def model_means(db) -> pd.DataFrame:
    """Each model's mean per dataset and depth group (long format: one row per model, group and metric)."""
    result = compare_groups(db, "robust", "normal", layer="deciles", by="dataset", kernel="3x3",
                            metrics=list(METRICS), aggregate=AGGREGATE, with_divergence=False)
    per_model = result.per_model  # carries the model columns training and dataset (= group and by here)
    long = per_model.melt(id_vars=["model_id", "training", "dataset", "layers"], value_vars=list(METRICS),
                          var_name="metric", value_name="value")
    long["position"] = long["layers"].astype(str).map({label: i for i, label in enumerate(DECILE_LABELS)})
    return long.dropna(subset=["value"])


def summarize(long: pd.DataFrame) -> pd.DataFrame:
    """Mean over models and 95% bootstrap interval per dataset, metric, training and position."""
    rows = []
    for (dataset, metric, training, position), frame in long.groupby(["dataset", "metric", "training", "position"]):
        low, high = mean_bootstrap_ci(frame["value"], resamples=1000)
        if len(frame) < 2:  # no interval: the bar shows the one value
            low = high = float(frame["value"].mean())
        rows.append({"dataset": dataset, "metric": metric, "training": training, "position": position,
                     "mean": frame["value"].mean(), "low": low, "high": high, "models": frame["model_id"].nunique()})
    return pd.DataFrame(rows)


def plot(long: pd.DataFrame) -> plt.Figure:
    datasets = sorted(long["dataset"].unique())
    stats = summarize(long)
    fig, axes = plt.subplots(len(METRICS), len(datasets), figsize=(1.4 + 4.4 * len(datasets), 8.2),
                             sharex=True, sharey="row", squeeze=False)
    offsets = {"normal": -0.1, "robust": 0.1}  # side by side, so that the intervals do not hide each other
    markers = _style.TRAINING_MARKERS
    for col, dataset in enumerate(datasets):
        for row, metric in enumerate(METRICS):
            ax = axes[row, col]
            _style.depth_axis(ax)
            data = stats[(stats["dataset"] == dataset) & (stats["metric"] == metric)]
            for training in _style.TRAINING_ORDER:
                d = data[data["training"] == training].sort_values("position")
                color = _style.TRAINING_COLORS[training]
                x = d["position"] + offsets[training]
                ax.errorbar(x, d["mean"], yerr=[d["mean"] - d["low"], d["high"] - d["mean"]], fmt=markers[training],
                            color=color, markersize=5, capsize=2, elinewidth=1, linestyle="none", zorder=3)
                _style.depth_line(ax, d["position"], d["mean"], offsets[training], color=color, linewidth=1.5)
            if metric == "sparsity":
                ax.set_ylim(bottom=-0.02)
                if len(data) and float(data["high"].max()) == 0.0:
                    ax.text(0.5, 0.75, "no sparse filters in these models", transform=ax.transAxes,
                            ha="center", va="center", fontsize="small", color="dimgray")
            ax.set_xlabel("")
            ax.set_ylabel(METRICS[metric] if col == 0 else "")
            if row == 0:
                n = long[long["dataset"] == dataset].groupby("training")["model_id"].nunique()
                ax.set_title(f"{_style.dataset_label(dataset)}\n({n.get('robust', 0)} robust, "
                             f"{n.get('normal', 0)} normal models)")
        axes[-1, col].set_xlabel(_style.DEPTH_LABEL)
    handles = [plt.Line2D([], [], color=_style.TRAINING_COLORS[t], marker=markers[t], label=_style.TRAINING_LABELS[t])
               for t in _style.TRAINING_ORDER]
    fig.legend(handles=handles, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.0))
    fig.text(0.5, 0.955, f"Aggregation: {AGGREGATE} ({AGGREGATE_NOTE})", ha="center", va="top",
             fontsize="x-small", color="dimgray", wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.935))
    return fig


def main(argv=None) -> list[Path]:
    return _style.database_figure_main(argv, __doc__, NAME, "The metrics-by-depth figure", model_means, plot,
                                       "no 3x3 convolution layers with defined metrics in the database")


if __name__ == "__main__":
    main()
