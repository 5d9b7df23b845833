"""Filter metrics by depth: sparsity, variance entropy and orthogonality, robust vs normal.

The main figure of *Adversarial Robustness through the Lens of Convolutional Filters*
(CVPR-W 2022, Fig. 2): one row per metric, one column per dataset; the x axis is the
first convolution on its own, then the deciles of relative depth (conv_depth_norm,
right-closed, as ``compare --layer deciles``). Every 3x3 convolution counts; a model's
value in a decile is the mean over its layers there, so each model counts once per
point. Lines join the mean over models, bands are 95% bootstrap intervals (seed 0).
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
import seaborn as sns  # noqa: E402

from filterdb.analysis import compare_groups  # noqa: E402
from filterdb.analysis.groups import DECILE_LABELS  # noqa: E402

NAME = "metrics_by_depth"
METRICS = {"sparsity": "Sparsity\n(share of near-zero filters)",
           "ve_linf": "Variance entropy\n(filter diversity)",
           "orthogonality": "Orthogonality\n(of output channels)"}
TICKS = ("first",) + tuple(f"{10 * i}–{10 * (i + 1)}" for i in range(10))


def model_means(db) -> pd.DataFrame:
    """Each model's mean per dataset and depth group (long format: one row per model, group and metric)."""
    result = compare_groups(db, "robust", "normal", layer="deciles", by="dataset", kernel="3x3",
                            metrics=list(METRICS), with_divergence=False)
    per_model = result.per_model.rename(columns={"group": "training", "by": "dataset"})
    long = per_model.melt(id_vars=["model_id", "training", "dataset", "layers"], value_vars=list(METRICS),
                          var_name="metric", value_name="value")
    long["position"] = long["layers"].astype(str).map({label: i for i, label in enumerate(DECILE_LABELS)})
    return long.dropna(subset=["value"])


def plot(long: pd.DataFrame, datasets: list[str]) -> plt.Figure:
    fig, axes = plt.subplots(len(METRICS), len(datasets), figsize=(1.2 + 4.2 * len(datasets), 7.6),
                             sharex=True, sharey="row", squeeze=False)
    for col, dataset in enumerate(datasets):
        for row, metric in enumerate(METRICS):
            ax = axes[row, col]
            data = long[(long["dataset"] == dataset) & (long["metric"] == metric)]
            sns.lineplot(data=data, x="position", y="value", hue="training", hue_order=_style.TRAINING_ORDER,
                         palette=_style.TRAINING_COLORS, style="training", style_order=_style.TRAINING_ORDER,
                         markers=["o", "s"], dashes=False, errorbar=("ci", 95), n_boot=1000, seed=0,
                         err_kws={"alpha": 0.2, "linewidth": 0}, ax=ax, legend=False)
            ax.set_xlim(-0.5, len(DECILE_LABELS) - 0.5)
            ax.set_xticks(range(len(DECILE_LABELS)), TICKS, rotation=45, ha="right", rotation_mode="anchor")
            ax.set_xlabel("")
            ax.set_ylabel(METRICS[metric] if col == 0 else "")
            if metric == "sparsity":
                ax.set_ylim(bottom=-0.02)
            if row == 0:
                n = data.groupby("training")["model_id"].nunique()
                ax.set_title(f"{_style.dataset_label(dataset)}  ({n.get('robust', 0)} robust, "
                             f"{n.get('normal', 0)} normal models)")
        axes[-1, col].set_xlabel("Depth: first layer, then relative depth (%)")
    handles = [plt.Line2D([], [], color=_style.TRAINING_COLORS[t], marker=m, label=_style.TRAINING_LABELS[t])
               for t, m in zip(_style.TRAINING_ORDER, "os")]
    fig.legend(handles=handles, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def main(argv=None) -> list[Path]:
    args = _style.parser(__doc__).parse_args(argv)
    _style.apply_style()
    with _style.open_db(args.db) as db:
        _style.require_both_groups(db.models, "The metrics-by-depth figure")
        long = model_means(db)
    if long.empty:
        raise SystemExit("no 3x3 convolution layers with defined metrics in the database")
    return _style.save(plot(long, sorted(long["dataset"].unique())), args.out, NAME)


if __name__ == "__main__":
    main()
