"""What every figure script shares: the command line, the style, the data helpers and saving.

One style for all figures: seaborn's "whitegrid" theme in the "paper" context, the
colorblind palette for robust vs normal, a colorblind-safe diverging map (RdBu) for
filter weights, axis labels in words. ``save`` writes PNG and PDF without time stamps or
version strings, so a rerun on the same inputs gives the same bytes.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from filterdb import paths  # noqa: E402

FIGURES_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = FIGURES_DIR / "out"
DPI = 150

TRAINING_ORDER = ("normal", "robust")
TRAINING_LABELS = {"normal": "Normal training", "robust": "Adversarial training"}
_PALETTE = sns.color_palette("colorblind")
TRAINING_COLORS = {"normal": _PALETTE[0], "robust": _PALETTE[1]}
TRAINING_MARKERS = {"normal": "o", "robust": "s"}
REFERENCE_COLOR = _PALETTE[7]  # grey
WEIGHT_CMAP = "RdBu_r"  # diverging, colorblind-safe (ColorBrewer); zero is white
ACTIVATION_CMAP = "magma"  # sequential, perceptually uniform

DATASET_LABELS = {"digits": "Digits (8x8)", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                  "imagenet": "ImageNet", "svhn": "SVHN"}


def apply_style() -> None:
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
    plt.rcParams.update({
        "figure.dpi": DPI, "savefig.dpi": DPI, "savefig.bbox": "tight", "savefig.pad_inches": 0.05,
        "axes.titlesize": "medium", "axes.titleweight": "bold", "legend.frameon": False,
        "image.interpolation": "nearest", "pdf.fonttype": 42, "svg.hashsalt": "filterdb",
    })


def dataset_label(name: str) -> str:
    return DATASET_LABELS.get(name, name)


# ---------------------------------------------------------------------------- depth axis

DEPTH_TICKS = ("first",) + tuple(f"{10 * i}–{10 * (i + 1)}" for i in range(10))
DEPTH_LABEL = "Depth: first convolution, then relative depth (%)"


def depth_axis(ax) -> None:
    """The x axis of the by-depth figures: the first convolution (position 0), a thin
    separator, then the ten deciles of relative depth (positions 1..10)."""
    ax.set_xlim(-0.5, len(DEPTH_TICKS) - 0.5)
    ax.set_xticks(range(len(DEPTH_TICKS)), DEPTH_TICKS, rotation=45, ha="right", rotation_mode="anchor")
    ax.axvline(0.5, color=REFERENCE_COLOR, linewidth=0.8, zorder=0)


def depth_runs(positions) -> list[list[int]]:
    """Sorted positions split where a line must not join them: the first convolution stands
    alone, and deciles without data break the line (no line over missing data)."""
    runs: list[list[int]] = []
    for p in sorted(int(v) for v in positions):
        if runs and p != 1 and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def depth_line(ax, x, y, offset: float = 0.0, **kwargs) -> None:
    """Lines over the runs of :func:`depth_runs` (markers are drawn by the caller)."""
    values = dict(zip((int(v) for v in x), y))
    for run in depth_runs(values):
        if len(run) > 1:
            ax.plot([p + offset for p in run], [values[p] for p in run], **kwargs)


# ---------------------------------------------------------------------------- command line

def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every script has: --db and --out."""
    p = argparse.ArgumentParser(description=(doc or "").strip().split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, default=None,
                   help="filter database directory or exported .h5 file "
                        "[default: the demo database, $FILTERDB_HOME/demo-db]")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory [default: {DEFAULT_OUT}]")
    return p


def open_db(path: Path | None):
    from filterdb.errors import FilterDBError
    from filterdb.store import open_database

    path = Path(path) if path else paths.demo_db_path()
    if not path.exists():
        raise SystemExit(f"no filter database at {path}: build the demo with 'filterdb demo' "
                         "(or run figures/make_all.py, which builds it), or pass --db PATH")
    try:
        return open_database(path)
    except FilterDBError as exc:
        raise SystemExit(str(exc)) from None


def database_figure_main(argv, doc: str | None, name: str, what: str, compute: Callable[..., pd.DataFrame],
                         plot: Callable[[pd.DataFrame], plt.Figure], empty: str) -> list[Path]:
    """The ``main`` of a figure drawn from one robust-vs-normal table: parse --db and --out, open
    the database, check that it holds both groups (``what`` names the figure in the message),
    ``compute(db)`` the table, stop with ``empty`` if it has no rows, then ``plot`` it and save
    it as ``<out>/<name>.png`` and ``.pdf``."""
    args = parser(doc).parse_args(argv)
    apply_style()
    with open_db(args.db) as db:
        require_both_groups(db.models, what)
        values = compute(db)
    if values.empty:
        raise SystemExit(empty)
    return save(plot(values), args.out, name)


def save(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``<out_dir>/<name>.png`` and ``.pdf`` (no time stamps: deterministic) and close the figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(written[0], metadata={"Software": None})
    fig.savefig(written[1], metadata={"CreationDate": None, "Creator": None, "Producer": None})
    plt.close(fig)
    return written


# ---------------------------------------------------------------------------- data

def conv_layers(db, kernel: str = "3x3") -> pd.DataFrame:
    """Reached layers of one kernel size, with their model's training, dataset, architecture and name."""
    layers = db.layers
    layers = layers[(layers["kernel"] == kernel) & layers["reached"].astype(bool) & (layers["conv_depth"] >= 0)]
    info = db.models[["training", "dataset", "architecture", "name"]].rename(columns={"name": "model_name"})
    return layers.join(info, on="model_id")


def require_both_groups(models: pd.DataFrame, what: str) -> None:
    present = set(models["training"])
    missing = [t for t in TRAINING_ORDER if t not in present]
    if missing:
        raise SystemExit(f"{what} compares robust and normal models, but the database has no "
                         f"{' or '.join(missing)} models (training column values: {', '.join(sorted(present)) or 'none'})")


def matched_pairs(db, robust: str | None = None, normal: str | None = None) -> list[tuple[pd.Series, pd.Series]]:
    """(robust, normal) pairs of models, best matches first (``filterdb.model_pairs.ranked_pairs``):
    twins trained as a matched pair, then same dataset, same architecture, same run name.

    ``robust`` / ``normal`` (a model id or name) fix that side of every pair.
    """
    from filterdb.model_pairs import ranked_pairs

    models = db.models
    require_both_groups(models, "this figure")

    def model_id(key: str, training: str) -> str:
        hit = models[(models["model_id"] == key) | (models["name"] == key)]
        if hit.empty:
            raise SystemExit(f"no model {key!r} in {db.path}; 'filterdb info' lists the models")
        if hit.iloc[0]["training"] != training:
            raise SystemExit(f"model {key!r} is {hit.iloc[0]['training'] or 'of unknown training'}, not {training}")
        return hit.index[0]

    ranked = ranked_pairs(models)
    if robust is not None:
        ranked = ranked[ranked["robust_id"] == model_id(robust, "robust")]
    if normal is not None:
        ranked = ranked[ranked["normal_id"] == model_id(normal, "normal")]
    return [(models.loc[r], models.loc[n]) for r, n in zip(ranked["robust_id"], ranked["normal_id"])]


def matched_pair(db, robust: str | None = None, normal: str | None = None) -> tuple[pd.Series, pd.Series]:
    """The best-matched (robust, normal) pair; see :func:`matched_pairs`."""
    return matched_pairs(db, robust, normal)[0]


def model_label(row: pd.Series) -> str:
    """A short name for a model in a title: its name without the dataset prefix."""
    name = row["name"]
    dataset = row["dataset"]
    return name[len(dataset) + 1:] if dataset and name.startswith(dataset + "/") else name


def filter_mosaic(filters: np.ndarray, cols: int, gap: int = 1) -> np.ndarray:
    """Tile (n, kh, kw) or (n, kh, kw, 3) filters into one image, ``gap`` NaN (or white) pixels between them."""
    n, kh, kw = filters.shape[:3]
    rows = -(-n // cols)
    shape = (rows * (kh + gap) - gap, cols * (kw + gap) - gap, *filters.shape[3:])
    mosaic = np.full(shape, np.nan if filters.ndim == 3 else 1.0, dtype=np.float64)
    for i, f in enumerate(filters):
        r, c = divmod(i, cols)
        mosaic[r * (kh + gap):r * (kh + gap) + kh, c * (kw + gap):c * (kw + gap) + kw] = f
    return mosaic

