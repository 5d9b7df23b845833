"""Padding: where adversarial perturbations sit, per padding mode, with the border ratio.

*On the Interplay of Convolutional Padding and Adversarial Robustness* (ICCV-W 2023),
the perturbation-map figure (Fig. 3): for models that differ only in the padding mode of
their convolutions (zeros, reflect, replicate, circular, none), the mean |perturbation|
per pixel of an attack on the test set (averaged over channels and over the images that
were classified correctly and fooled), on one shared color scale; and the border ratio,
the mean over the outer frame (1 pixel wide by default: the pixels that 3x3 padding
touches) divided by the mean over the interior (1 = no preference for the border).

The figure is drawn from evaluation results, not from the filter database: every
checkpoint (*.pt) under --models that ``filterdb evaluate`` has evaluated
(CHECKPOINT.eval.json and CHECKPOINT.eval.h5 beside it, read with
``filterdb.training.evaluation.load_evaluation`` / ``load_perturbation_maps``). The
padding mode is read from each checkpoint's model string; several checkpoints of one
mode (seeds, architectures of one input size) are averaged, each model weighted
equally, and their single border ratios are drawn as dots. --attack and --budget pick one
attack and budget of the results [default: one that every checkpoint has, PGD first].

With --train (what make_all.py does), the demo's variants are made first where missing:
``cnn3-16_<mode>`` trained on digits (standard training, seed 0) and evaluated with
L2 PGD-10 at eps 1 on the 360 test images, cached under --models [default:
$FILTERDB_HOME/figures/padding-models]; about 10 s on 2 CPU cores the first time. --db
is accepted for a uniform command line but not read.

    python figures/padding_perturbation.py [--out DIR] [--models DIR] [--train]
                                           [--attack NAME] [--budget NORM:EPS] [--frame PIXELS]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _style  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from filterdb import paths  # noqa: E402
from filterdb.errors import FilterDBError  # noqa: E402

NAME = "padding_perturbation"
MODES = ("zeros", "reflect", "replicate", "circular", "nopad")
MODE_LABELS = {"zeros": "Zeros", "reflect": "Reflect", "replicate": "Replicate", "circular": "Circular",
               "nopad": "No padding"}
MODE_COLORS = dict(zip(MODES, sns.color_palette("colorblind")[2:7]))  # distinct from robust/normal
DEMO_MODEL = "cnn3-16"
DEMO_EPOCHS = 8
DEMO_EVALUATION = {"attacks": "pgd-10", "linf": (), "l2": (1.0,), "spatial": False, "border_widths": (1, 2),
                   "n_samples": 1000, "seed": 0}
DEMO_KEY = ("pgd-10", "L2", "1")


def default_models_dir() -> Path:
    return paths.home() / "figures" / "padding-models"


def mode_of(model_string: str) -> str:
    from filterdb.training import parse_model_string
    padding = parse_model_string(model_string).padding
    return "nopad" if padding == "none" else padding


# ---------------------------------------------------------------------------- the demo's variants

def _finished(path: Path) -> bool:
    from filterdb.training import load_checkpoint
    try:
        return "clean_acc" in load_checkpoint(path).metrics
    except FilterDBError:
        return False


def _evaluated(path: Path, key: tuple[str, str, str]) -> bool:
    """Whether ``path`` has evaluation results of its current weights that include ``key``."""
    from filterdb.training.evaluation import load_evaluation, maps_path
    try:
        summary = load_evaluation(path)
    except FilterDBError:
        return False
    return maps_path(path).is_file() and any((a["attack"], a["norm"], a["eps_label"]) == key
                                             for a in summary.get("attacks", []))


def prepare_demo(directory: Path, epochs: int = DEMO_EPOCHS) -> None:
    """Train ``cnn3-16_<mode>`` on digits for every padding mode without a finished checkpoint,
    and evaluate every checkpoint under ``directory`` that has no results for the demo's attack."""
    from filterdb.training import TrainConfig, train
    from filterdb.training.evaluation import EvaluationConfig, evaluate_checkpoint

    for mode in MODES:
        out = directory / mode
        if not _finished(out / "last.pt"):
            print(f"padding figure: training {DEMO_MODEL}_{mode} on digits ...", flush=True)
            train(TrainConfig(model_string=f"{DEMO_MODEL}_{mode}", dataset="digits", method="standard",
                              epochs=epochs, batch_size=64, lr=0.05, seed=0), out)
    for path in sorted(directory.rglob("*.pt")):
        if not _evaluated(path, DEMO_KEY):
            print(f"padding figure: evaluating {path.relative_to(directory)} (L2 PGD-10, eps 1) ...", flush=True)
            evaluate_checkpoint(path, EvaluationConfig(**DEMO_EVALUATION))


# ---------------------------------------------------------------------------- evaluation results

def load_results(directory: Path) -> list[dict]:
    """One entry per evaluated checkpoint under ``directory``: its path, mode, results and maps.
    Checkpoints without (current) results are left out with a note on stderr."""
    from filterdb.training.evaluation import evaluation_path, load_evaluation, load_perturbation_maps

    results = []
    for path in sorted(directory.rglob("*.pt")):
        if not evaluation_path(path).is_file():
            print(f"padding figure: {path} has no evaluation results ('filterdb evaluate {path}'); left out",
                  file=sys.stderr)
            continue
        try:
            summary = load_evaluation(path)
            maps = load_perturbation_maps(path)
            mode = mode_of(summary.get("model_string") or _model_string(path))
        except FilterDBError as exc:
            print(f"padding figure: {exc}; left out", file=sys.stderr)
            continue
        results.append({"path": path, "mode": mode, "summary": summary, "maps": maps})
    return results


def _model_string(path: Path) -> str:
    from filterdb.training import load_checkpoint
    return load_checkpoint(path).model_string


def choose_key(results: list[dict], attack: str | None, budget: tuple[str, float] | None) -> tuple[str, str, str]:
    """The (attack, norm, eps_label) shown: among those every result has and that match the
    options, the first PGD one, else the first (in the first result's order)."""
    from filterdb.training.attacks import format_eps

    def keys(result):
        return [(a["attack"], a["norm"], a["eps_label"]) for a in result["summary"]["attacks"]]

    common = [k for k in keys(results[0]) if all(k in keys(r) for r in results[1:]) and k in results[0]["maps"]]
    if attack:
        common = [k for k in common if k[0] == attack.lower()]
    if budget:
        common = [k for k in common if k[1] == budget[0] and k[2] == format_eps(budget[1])]
    if not common:
        available = sorted({f"{a} {n}:{e}" for r in results for a, n, e in keys(r)})
        raise SystemExit("no attack and budget that every evaluated checkpoint has"
                         + (" and that matches --attack / --budget" if attack or budget else "")
                         + f"; the results have: {', '.join(available) or 'none'}. Evaluate the checkpoints "
                         "alike ('filterdb evaluate --attacks ... --l2 ... CHECKPOINTS')")
    return next((k for k in common if k[0].startswith("pgd")), common[0])


def per_model(result: dict, key: tuple[str, str, str], frame: int) -> dict:
    """One checkpoint's map, sample count, accuracies and border ratio for ``key``."""
    from filterdb.training.perturbation import border_stats

    attack = next(a for a in result["summary"]["attacks"] if (a["attack"], a["norm"], a["eps_label"]) == key)
    pmap = np.asarray(result["maps"][key], dtype=np.float64)
    stored = [b for b in attack["perturbation"]["border"] if b["width"] == frame]
    ratio = stored[0]["ratio"] if stored else (border_stats(pmap, frame)["ratio"] if 2 * frame < min(pmap.shape)
                                                else np.nan)
    return {"mode": result["mode"], "map": pmap, "n_samples": int(attack["perturbation"]["n_samples"]),
            "ratio": float(ratio), "clean_acc": float(result["summary"]["clean_acc"]),
            "robust_acc": float(attack["robust_acc"])}


def by_mode(models: list[dict], frame: int) -> dict[str, dict]:
    """Padding mode -> the mean map over its models (each weighted equally), their ratios and accuracies."""
    from filterdb.training.perturbation import border_stats

    shapes = {m["map"].shape for m in models}
    if len(shapes) > 1:
        raise SystemExit(f"the checkpoints' perturbation maps differ in size ({', '.join(map(str, sorted(shapes)))}): "
                         "pass --models with checkpoints of one dataset")
    modes = {}
    for mode in MODES:
        group = [m for m in models if m["mode"] == mode]
        if not group:
            continue
        maps = [m["map"] for m in group if m["n_samples"]]
        mean = np.mean(maps, axis=0) if maps else np.full(group[0]["map"].shape, np.nan)
        ratio = group[0]["ratio"] if len(group) == 1 else (
            border_stats(mean, frame)["ratio"] if maps and 2 * frame < min(mean.shape) else np.nan)
        modes[mode] = {"map": mean, "ratio": ratio, "ratios": [m["ratio"] for m in group],
                       "n_models": len(group), "n_samples": sum(m["n_samples"] for m in group),
                       "clean_acc": float(np.mean([m["clean_acc"] for m in group])),
                       "robust_acc": float(np.mean([m["robust_acc"] for m in group]))}
    return modes


# ---------------------------------------------------------------------------- the figure

def plot(modes: dict[str, dict], key: tuple[str, str, str], frame: int) -> plt.Figure:
    n = len(modes)
    fig = plt.figure(figsize=(2.2 * n + 4.9, 3.6))
    maps_grid = fig.add_gridspec(1, n + 1, width_ratios=[1] * n + [0.07], wspace=0.12, left=0.0,
                                 right=(2.2 * n + 0.3) / (2.2 * n + 4.9))
    finite = [float(np.nanmax(m["map"])) for m in modes.values() if np.isfinite(m["map"]).any()]
    vmax = max(finite, default=0.0) or 1.0
    image = None
    for i, (mode, m) in enumerate(modes.items()):
        ax = fig.add_subplot(maps_grid[0, i])
        image = ax.imshow(m["map"], cmap=_style.ACTIVATION_CMAP, vmin=0, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title(MODE_LABELS[mode])
        if not m["n_samples"]:
            ax.text(0.5, 0.5, "no perturbation:\nthe attack fooled\nno image", transform=ax.transAxes,
                    ha="center", va="center", fontsize="small", color="dimgray")
        models = f"{m['n_models']} models, " if m["n_models"] > 1 else ""
        fooled = f"{m['n_samples']} fooled images" if m["n_samples"] else "no image fooled"
        ax.set_xlabel(f"{models}{fooled}\nclean {m['clean_acc']:.0f}%, robust {m['robust_acc']:.0f}%",
                      fontsize="small")
    cbar = fig.colorbar(image, cax=fig.add_subplot(maps_grid[0, n]))
    cbar.set_label("Mean |perturbation| per pixel")

    bars_grid = fig.add_gridspec(1, 1, left=(2.2 * n + 2.25) / (2.2 * n + 4.9), right=1.0, bottom=0.22, top=0.86)
    ax = fig.add_subplot(bars_grid[0, 0])
    names = list(modes)
    ratios = np.array([modes[m]["ratio"] for m in names], dtype=float)
    shown = np.where(np.isfinite(ratios), ratios, 0.0)
    ax.bar(range(n), shown, color=[MODE_COLORS[m] for m in names], width=0.7)
    for i, mode in enumerate(names):
        single = [r for r in modes[mode]["ratios"] if np.isfinite(r)]
        if len(modes[mode]["ratios"]) > 1 and single:
            ax.plot([i] * len(single), single, "o", color="black", markersize=3, zorder=3)
        if not np.isfinite(ratios[i]):
            ax.text(i, 0.02, "n/a" if np.isnan(ratios[i]) else "inf", ha="center", va="bottom", fontsize="small")
    top = max(1.0, float(np.nanmax(np.where(np.isfinite(ratios), ratios, np.nan), initial=1.0)))
    ax.set_ylim(0, 1.18 * top)
    ax.axhline(1.0, color=_style.REFERENCE_COLOR, linestyle="--", linewidth=1)
    ax.annotate("no preference", (0.0, 1.0), xycoords=("axes fraction", "data"), xytext=(3, 2),
                textcoords="offset points", ha="left", va="bottom", fontsize="x-small", color="dimgray")
    ax.set_xticks(range(n), [MODE_LABELS[m] for m in names], rotation=40, ha="right", rotation_mode="anchor")
    ax.grid(axis="x", visible=False)
    ax.set_ylabel(f"Border ratio\n({frame}-pixel frame / interior)")
    ax.set_xlabel("Padding mode")
    attack, norm, eps = key
    norm = "L-inf" if norm == "Linf" else norm
    fig.suptitle(f"Where the attack perturbs the input ({attack.upper()}, {norm}, eps = {eps})", y=1.0)
    return fig


def main(argv=None) -> list[Path]:
    from filterdb.training.evaluation import parse_threat

    p = _style.parser(__doc__)
    p.add_argument("--models", type=Path, default=None,
                   help="folder of evaluated checkpoints (searched recursively), one or more per padding mode "
                        "[default: $FILTERDB_HOME/figures/padding-models]")
    p.add_argument("--train", action="store_true",
                   help=f"first train and evaluate the missing {DEMO_MODEL} padding variants on digits")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"epochs of those variants [default: {DEMO_EPOCHS}]")
    p.add_argument("--attack", default=None, help="attack of the results, e.g. pgd-20 [default: PGD if evaluated]")
    p.add_argument("--budget", default=None, help="budget of the results, NORM:EPS, e.g. Linf:8/255")
    p.add_argument("--frame", type=int, default=1, help="width in pixels of the border frame [default: 1]")
    args = p.parse_args(argv)
    _style.apply_style()
    try:
        budget = parse_threat(args.budget)
    except FilterDBError as exc:
        raise SystemExit(str(exc)) from None
    directory = args.models or default_models_dir()
    if args.train:
        prepare_demo(directory, args.epochs)
    results = load_results(directory) if directory.is_dir() else []
    if not results:
        raise SystemExit(f"no evaluated checkpoints under {directory}: pass --models DIR with checkpoints evaluated "
                         f"by 'filterdb evaluate' (one or more per padding mode), or --train to train and evaluate "
                         f"the {DEMO_MODEL} variants on digits")
    key = choose_key(results, args.attack, budget)
    modes = by_mode([per_model(r, key, args.frame) for r in results], args.frame)
    return _style.save(plot(modes, key, args.frame), args.out, NAME)


if __name__ == "__main__":
    main()
