"""Pictures of filters: one layer's filters (``filterdb show MODEL LAYER --plot``), and the atomic figure save.

One row per output channel, one column per input channel of its group (at most
:data:`MAX_CHANNELS` of each, the title says how many are shown), each filter kh x kw
pixels, one diverging scale over the layer (white = 0, so dead filters show white).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_CHANNELS = 32
PLOT_SUFFIXES = ("png", "pdf", "svg")


def layer_mosaic(filters: np.ndarray, out_channels: int, max_channels: int = MAX_CHANNELS
                 ) -> tuple[np.ndarray, int, int]:
    """The filters (n, kh, kw), n = out * cin, as one image with a one-pixel NaN gap; also the
    numbers of output and input channels shown."""
    n, kh, kw = filters.shape
    cin = n // out_channels
    rows, cols = min(out_channels, max_channels), min(cin, max_channels)
    grid = filters.reshape(out_channels, cin, kh, kw)[:rows, :cols]
    image = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1), np.nan, np.float32)
    for r in range(rows):
        for c in range(cols):
            image[r * (kh + 1):r * (kh + 1) + kh, c * (kw + 1):c * (kw + 1) + kw] = grid[r, c]
    return image, rows, cols


def plot_layer(filters: np.ndarray, out_channels: int, title: str, path: Path) -> None:
    """Draw a layer's filters (see the module's docstring) into ``path`` (.png, .pdf or .svg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, rows, cols = layer_mosaic(filters, out_channels)
    scale = float(np.nanmax(np.abs(filters))) if filters.size else 0.0
    scale = scale or 1.0
    n, kh, kw = filters.shape
    cin = n // out_channels
    fig, ax = plt.subplots(figsize=(min(12, 1 + 0.25 * cols * (kw + 1)), min(12, 1 + 0.25 * rows * (kh + 1))))
    shown = ax.imshow(image, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"input channel ({cols} of {cin} shown)")
    ax.set_ylabel(f"output channel ({rows} of {out_channels} shown)")
    ax.set_title(title, fontsize=8)
    fig.colorbar(shown, ax=ax, shrink=0.6)
    save_figure(fig, path)
    plt.close(fig)


def save_figure(fig, path) -> None:
    """Write a matplotlib figure to ``path`` atomically, in the format its suffix names (png without one)."""
    from filterdb.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=120)
