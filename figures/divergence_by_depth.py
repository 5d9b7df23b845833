"""Divergence by depth: how far the 3x3 filters of robust models are from those of normal ones.

*Adversarial Robustness through the Lens of Convolutional Filters* (CVPR-W 2022), the
divergence figure (Fig. 4): per dataset, the symmetric KL divergence D between the
filter distributions of robust and of normal models, as the authors compute it
(filterdb.analysis.divergence: L-inf-scaled non-sparse 3x3 filters, one 9-component PCA
basis and one histogram range fit on every model of the database, 70-bin density
histograms per component, D = sum_i EVR_i (KL(p_i||q_i) + KL(q_i||p_i))), for the first
convolution and for each decile of relative depth.

Two references, so that a value can be read: the black crosses are the median of the
permutation null (the models' robust/normal labels shuffled, each model whole, same basis;
up to 999 shuffles, seed 0), with the permutation p-value printed above each point; the
grey triangles are D between two halves of the normal models (alternating in name order),
the spread between models trained alike, drawn where a depth group has at least two normal
models. Lines join neighbouring deciles only (not the first layer, not over deciles without
layers).

Streams layer by layer (the basis is cached in the database), so any database size fits
in memory.

    python figures/divergence_by_depth.py [--db DB] [--out DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _style  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from filterdb.analysis import compare_groups  # noqa: E402
from filterdb.analysis.basis import reference_basis  # noqa: E402
from filterdb.analysis.divergence import Histograms, divergence_from_histograms  # noqa: E402
from filterdb.analysis.groups import DECILE_LABELS, select_layers  # noqa: E402

NAME = "divergence_by_depth"
PERMUTATIONS = 999


def group_divergence(db, layers_a: pd.DataFrame, layers_b: pd.DataFrame, basis) -> float:
    """D between the filters of two sets of layers on the database basis (NaN if either has no
    non-sparse filter). compare_groups computes the same D for groups that model columns
    define; the halves of a group are not such a group, hence this pass of its own."""
    hists = []
    for layers in (layers_a, layers_b):
        hist = Histograms(basis)
        for _, filters in db.iter_layers(layers):
            if len(filters):
                hist.add(filters, float(np.abs(filters).max()))
        hists.append(hist)
    return divergence_from_histograms(*hists).value


def halves(layers: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    names = sorted(layers["model_name"].unique())
    if len(names) < 2:
        return None
    first = set(names[0::2])
    mask = layers["model_name"].isin(first)
    return layers[mask], layers[~mask]


def divergences(db) -> pd.DataFrame:
    """Per dataset and depth group: D(robust, normal) and the reference D between halves of the normal models."""
    result = compare_groups(db, "robust", "normal", layer="deciles", by="dataset", kernel="3x3", metrics=["sparsity"],
                            permutations=PERMUTATIONS)
    values = result.divergence.rename(columns={"by": "dataset", "divergence": "robust_vs_normal"})
    basis = reference_basis(db, "3x3")
    values["position"] = values["layers"].astype(str).map({label: i for i, label in enumerate(DECILE_LABELS)})
    layers = select_layers(_style.conv_layers(db, "3x3"), "deciles")
    normal = layers[layers["training"] == "normal"]
    reference = {}
    for (dataset, group), frame in normal.groupby(["dataset", "layers"], observed=True):
        split = halves(frame)
        if split:
            reference[(dataset, str(group))] = group_divergence(db, *split, basis)
    values["normal_halves"] = [reference.get((d, str(g)), np.nan) for d, g in zip(values["dataset"], values["layers"])]
    return values[["dataset", "position", "robust_vs_normal", "perm_null_median", "perm_p", "normal_halves"]]


def plot(values: pd.DataFrame) -> plt.Figure:
    datasets = sorted(values["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(1.4 + 4.6 * len(datasets), 4.2), sharey=True, squeeze=False)
    color = _style.TRAINING_COLORS["robust"]
    for ax, dataset in zip(axes[0], datasets):
        _style.depth_axis(ax)
        data = values[values["dataset"] == dataset].sort_values("position")
        main = data.dropna(subset=["robust_vs_normal"])
        ax.plot(main["position"], main["robust_vs_normal"], "o", color=color, zorder=3)
        _style.depth_line(ax, main["position"], main["robust_vs_normal"], color=color)
        null = data.dropna(subset=["perm_null_median"])
        ax.plot(null["position"], null["perm_null_median"], "x", color="black", zorder=2)
        _style.depth_line(ax, null["position"], null["perm_null_median"], color="black", linestyle=":", linewidth=1)
        for x, y, p in zip(main["position"], main["robust_vs_normal"], main["perm_p"]):
            if np.isfinite(p):
                ax.annotate(f"p={p:.2g}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center",
                            fontsize="x-small", color="dimgray")
        ref = data.dropna(subset=["normal_halves"])
        ax.plot(ref["position"], ref["normal_halves"], "^", color=_style.REFERENCE_COLOR, zorder=2)
        _style.depth_line(ax, ref["position"], ref["normal_halves"], color=_style.REFERENCE_COLOR, linestyle="--")
        ax.set_title(_style.dataset_label(dataset))
        ax.set_xlabel(_style.DEPTH_LABEL)
    top = float(np.nanmax(values[["robust_vs_normal", "normal_halves", "perm_null_median"]].to_numpy(dtype=float),
                          initial=0.0))
    axes[0, 0].set_ylim(0, 1.15 * top if top > 0 else 1.0)  # shared: room above the highest marker
    axes[0, 0].set_ylabel("Divergence of the 3x3 filters\n(symmetric KL, EVR-weighted; database basis)")
    handles = [plt.Line2D([], [], color=color, marker="o", label="Robust vs normal models"),
               plt.Line2D([], [], color="black", marker="x", linestyle=":",
                          label=f"Permutation null: median D, labels shuffled over models ({PERMUTATIONS})"),
               plt.Line2D([], [], color=_style.REFERENCE_COLOR, marker="^", linestyle="--",
                          label="Normal vs normal (two halves of the normal models)")]
    fig.legend(handles=handles, loc="upper center", ncol=1 if len(datasets) == 1 else 2, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.82 if len(datasets) == 1 else 0.88))
    return fig


def main(argv=None) -> list[Path]:
    return _style.database_figure_main(argv, __doc__, NAME, "The divergence figure", divergences, plot,
                                       "no depth group has 3x3 filters of both robust and normal models of one dataset")


if __name__ == "__main__":
    main()
