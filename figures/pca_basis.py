"""PCA basis of 3x3 filters and its cumulative explained variance, robust vs normal.

*Adversarial Robustness through the Lens of Convolutional Filters* (CVPR-W 2022), the
PCA figure (Fig. 3; the same view as *CNN Filter DB*, CVPR 2022, Fig. 3): for the
robust and for the normal models, the nine principal components of all their 3x3
filters (each filter scaled by its L-inf norm, sparse filters removed, as for the
divergence), drawn as 3x3 images, with each component's share of the variance; and the
cumulative explained variance of both bases. A flatter curve means more diverse filters.
A component's sign is arbitrary: each is drawn with its largest entry positive (red).

    python figures/pca_basis.py [--db DB] [--out DIR] [--dataset NAME]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _style  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from filterdb.analysis.divergence import PCABasis  # noqa: E402
from filterdb.analysis.metrics import Moments, linf_scaled_nonsparse  # noqa: E402

NAME = "pca_basis"


def group_basis(db, layers) -> tuple[PCABasis, int]:
    """The PCA basis of the L-inf-scaled non-sparse filters of ``layers`` (streamed), and their count."""
    moments = Moments.empty(9)
    for _, filters in db.iter_layers(layers):
        moments = moments + Moments.of(linf_scaled_nonsparse(filters))
    basis = PCABasis.from_moments(moments)
    components = basis.components.copy()
    for c in components:
        if c[np.argmax(np.abs(c))] < 0:
            c *= -1
    return PCABasis(components, basis.explained_variance_ratio), moments.count


def plot(bases: dict, title: str) -> plt.Figure:
    fig = plt.figure(figsize=(13.2, 3.6))
    grid = fig.add_gridspec(2, 11, width_ratios=[1] * 9 + [1.1, 4.2], wspace=0.12, hspace=0.55)
    vmax = max(np.abs(b.components).max() for b, _ in bases.values())
    for r, (training, (basis, count)) in enumerate(bases.items()):
        for i, (component, evr) in enumerate(zip(basis.components, basis.explained_variance_ratio)):
            ax = fig.add_subplot(grid[r, i])
            image = ax.imshow(component.reshape(3, 3), cmap=_style.WEIGHT_CMAP, vmin=-vmax, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            ax.set_title(f"PC{i + 1}\n{100 * evr:.0f}%", fontsize="small", fontweight="normal")
            if i == 0:
                ax.set_ylabel(f"{_style.TRAINING_LABELS[training].replace(' training', '')}\n"
                              f"({count:,} filters)", fontsize="small")
    ax = fig.add_subplot(grid[:, 10])
    for training, (basis, _) in bases.items():
        ax.plot(np.arange(1, 10), np.cumsum(basis.explained_variance_ratio), marker=_style.TRAINING_MARKERS[training],
                color=_style.TRAINING_COLORS[training], label=_style.TRAINING_LABELS[training])
    ax.set_xticks(range(1, 10))
    ax.set_ylim(top=1.02)
    ax.set_xlabel("Number of principal components")
    ax.set_ylabel("Cumulative explained variance")
    ax.legend(loc="lower right")
    cbar = fig.colorbar(image, ax=fig.axes[:-1], location="left", shrink=0.7, pad=0.06, aspect=15)
    cbar.set_label("Component weight")
    fig.suptitle(f"Principal components of 3x3 filters — {title}", y=1.04)
    return fig


def main(argv=None) -> list[Path]:
    p = _style.parser(__doc__)
    p.add_argument("--dataset", default=None, help="only models of this dataset [default: all models]")
    args = p.parse_args(argv)
    _style.apply_style()
    with _style.open_db(args.db) as db:
        layers = _style.conv_layers(db, "3x3")
        if args.dataset:
            layers = layers[layers["dataset"].str.lower() == args.dataset.lower()]
        _style.require_both_groups(layers, "The PCA figure")
        bases = {t: group_basis(db, layers[layers["training"] == t]) for t in _style.TRAINING_ORDER}
    empty = [t for t, (_, count) in bases.items() if count < 2]
    if empty:
        raise SystemExit(f"too few non-sparse 3x3 filters for a PCA basis of the {' and '.join(empty)} models")
    title = _style.dataset_label(args.dataset) if args.dataset else \
        ", ".join(_style.dataset_label(d) for d in sorted(layers["dataset"].unique()))
    return _style.save(plot(bases, title), args.out, NAME)


if __name__ == "__main__":
    main()
