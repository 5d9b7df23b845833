"""Filter grids: the first-layer and a deep layer's filters of a robust and a normal model.

*Adversarial Robustness through the Lens of Convolutional Filters* (CVPR-W 2022),
Fig. 1 (first-layer filters of robust vs normal models) and its deep-layer counterpart
(the *CNN Filter DB* filter samples, CVPR 2022, Fig. 1). Left: the normal model, right:
the robust model of one matched pair (same dataset and architecture; by default the
first such pair in name order, or --robust / --normal by model id or name).

Top row: the first convolution. With 3 input channels each output channel is one RGB
image (grey = 0, shared scale over the layer); otherwise every filter is drawn on its
own. Bottom row: the deepest convolution with a spatial kernel (or --deep-layer, an
index into the model's convolutions), one row per output channel and one column per
input channel, at most 16 x 16. Weights use one diverging scale per layer (white = 0),
so dead and near-zero filters show as white.

    python figures/filter_grids.py [--db DB] [--out DIR] [--robust MODEL] [--normal MODEL]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _style  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

NAME = "filter_grids"
MAX_CHANNELS = 16


def model_layers(db, model_id: str) -> pd.DataFrame:
    layers = db.layers[(db.layers["model_id"] == model_id) & db.layers["reached"].astype(bool)]
    return layers[layers["member"] == 0].sort_values("conv_depth")


def pick_deep(layers: pd.DataFrame, index: int | None) -> pd.Series:
    if index is not None:
        hit = layers[layers["conv_depth"] == (index if index >= 0 else len(layers) + index)]
        if hit.empty:
            raise SystemExit(f"no convolution at index {index}: the model has {len(layers)}")
        return hit.iloc[0]
    spatial = layers[(layers["kernel_h"] > 1) | (layers["kernel_w"] > 1)]
    return (spatial if len(spatial) else layers).iloc[-1]


def first_layer_image(row: pd.Series, filters: np.ndarray) -> tuple[np.ndarray, str]:
    """The first layer as one mosaic: RGB filters for 3 input channels, else each filter alone."""
    out, cin = int(row["out_channels"]), int(row["in_channels"]) // int(row["groups"])
    scale = float(np.abs(filters).max()) or 1.0
    if cin == 3:
        rgb = filters.reshape(out, 3, *filters.shape[1:]).transpose(0, 2, 3, 1)
        return _style.filter_mosaic(0.5 + rgb / (2 * scale), cols=min(out, 16)), "rgb"
    return _style.filter_mosaic(filters, cols=min(len(filters), 8 if len(filters) <= 32 else 16)), "weights"


def deep_layer_image(row: pd.Series, filters: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One row per output channel, one column per input channel (at most MAX_CHANNELS each);
    also (output channels shown, of, input channels shown, of)."""
    out, cin = int(row["out_channels"]), int(row["in_channels"]) // int(row["groups"])
    grid = filters.reshape(out, cin, *filters.shape[1:])[:MAX_CHANNELS, :MAX_CHANNELS]
    mosaic = _style.filter_mosaic(grid.reshape(-1, *filters.shape[1:]), cols=grid.shape[1])
    return mosaic, (grid.shape[0], out, grid.shape[1], cin)


def _bare(ax) -> None:
    ax.grid(False)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def draw(fig, ax, image: np.ndarray, kind: str, scale: float, title: str) -> None:
    _bare(ax)
    ax.set_title(title, fontsize="medium", fontweight="normal")
    if kind == "rgb":
        ax.imshow(np.clip(np.nan_to_num(image, nan=1.0), 0, 1))
        return
    im = ax.imshow(image, cmap=_style.WEIGHT_CMAP, vmin=-scale, vmax=scale)
    cax = ax.inset_axes([1.03, 0.0, 0.035, 1.0])
    cbar = fig.colorbar(im, cax=cax)
    cbar.set_label("Weight", fontsize="small")
    cbar.ax.tick_params(labelsize="x-small")


def _shown(n: int, of: int) -> str:
    return f"all {n}" if n == of else f"first {n} of {of}"


def plot(db, pair: dict[str, pd.Series], deep_index: int | None) -> plt.Figure:
    panels = {}
    for training in _style.TRAINING_ORDER:
        model = pair[training]
        layers = model_layers(db, model["model_id"])
        first, deep = layers.iloc[0], pick_deep(layers, deep_index)
        first_filters, deep_filters = db.read_layer(first), db.read_layer(deep)
        panels[training] = (model, first, first_filters, *first_layer_image(first, first_filters),
                            deep, deep_filters, *deep_layer_image(deep, deep_filters))
    # row heights follow the mosaics' aspect, so that no row is mostly white space
    aspect = [max(p[3].shape[0] / p[3].shape[1] for p in panels.values()),
              max(p[7].shape[0] / p[7].shape[1] for p in panels.values())]
    width = 11.0
    heights = [max(0.6, 4.3 * a) + 0.6 for a in aspect]
    fig, axes = plt.subplots(2, 2, figsize=(width, sum(heights) + 0.6), gridspec_kw={"height_ratios": heights})
    for col, training in enumerate(_style.TRAINING_ORDER):
        model, first, first_filters, image, kind, deep, deep_filters, deep_image, counts = panels[training]
        kernel = f"{first['kernel']} filters" + (", RGB" if kind == "rgb" else "")
        draw(fig, axes[0, col], image, kind, float(np.abs(first_filters).max()),
             f"First convolution ({first['name']}): {int(first['out_channels'])} {kernel}")
        draw(fig, axes[1, col], deep_image, "weights", float(np.abs(deep_filters).max()),
             f"Deep convolution ({deep['name']}, {deep['kernel']}, relative depth {deep['conv_depth_norm']:.2f})")
        shown_out, out, shown_in, cin = counts
        axes[1, col].set_ylabel(f"Output channel ({_shown(shown_out, out)})", fontsize="small")
        axes[1, col].set_xlabel(f"Input channel ({_shown(shown_in, cin)})", fontsize="small")
        axes[0, col].annotate(f"{_style.TRAINING_LABELS[training]}\n{_style.model_label(model)}",
                              (0.5, 1.0), xycoords="axes fraction", xytext=(0, 26), textcoords="offset points",
                              ha="center", va="bottom", fontsize="large", fontweight="bold",
                              color=_style.TRAINING_COLORS[training])
    fig.tight_layout(h_pad=2.0, w_pad=4.0)
    return fig


def main(argv=None) -> list[Path]:
    p = _style.parser(__doc__)
    p.add_argument("--robust", default=None, help="the robust model (id or name) [default: from the first pair]")
    p.add_argument("--normal", default=None, help="the normal model (id or name) [default: from the first pair]")
    p.add_argument("--deep-layer", type=int, default=None,
                   help="index of the deep layer among the model's convolutions [default: the deepest spatial one]")
    args = p.parse_args(argv)
    _style.apply_style()
    with _style.open_db(args.db) as db:
        robust, normal = _style.matched_pair(db, args.robust, args.normal)
        fig = plot(db, {"normal": normal, "robust": robust}, args.deep_layer)
    return _style.save(fig, args.out, NAME)


if __name__ == "__main__":
    main()
