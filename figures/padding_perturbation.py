"""Padding: where adversarial perturbations sit, per padding mode, with the border ratio.

*On the Interplay of Convolutional Padding and Adversarial Robustness* (ICCV-W 2023),
the perturbation-map figure (Fig. 3): for models that differ only in the padding mode of
their convolutions (zeros, reflect, replicate, circular, none), the mean |perturbation|
per pixel of an attack on the test set (averaged over channels and over the images that
were classified correctly and fooled), on one shared color scale; and the border ratio,
the mean over the outer frame (1 pixel wide by default: the pixels that 3x3 padding
touches) divided by the mean over the interior (1 = no preference for the border).

The figure is drawn from what a filter database holds: every model whose ``evaluation_json``
column (the results of ``filterdb evaluate``, stored when its checkpoint was added) is set, with
the perturbation maps of those results (CHECKPOINT.eval.h5 beside the checkpoint the results
name). The padding mode is read from each model's ``model_string``; several models of one mode
(seeds, architectures of one input size) are averaged, each model weighted equally, and their
single border ratios are drawn as dots. --attack and --budget pick one attack and budget of the
results [default: one that every model has, PGD first].

The demo's models: ``python figures/padding_models.py`` trains ``cnn3-16_<mode>`` on digits,
evaluates them and adds them to $FILTERDB_HOME/figures/padding-db (what make_all.py runs first,
and this script's default --db); any database of evaluated checkpoints serves as well
(``filterdb train``, ``filterdb evaluate``, ``filterdb build --checkpoints``).

    python figures/padding_perturbation.py [--db DIR] [--out DIR] [--attack NAME] [--budget NORM:EPS]
                                           [--frame PIXELS]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _style  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import padding_models  # noqa: E402
import seaborn as sns  # noqa: E402

from filterdb.errors import FilterDBError  # noqa: E402

NAME = "padding_perturbation"
MODES = ("zeros", "reflect", "replicate", "circular", "nopad")
MODE_LABELS = {"zeros": "Zeros", "reflect": "Reflect", "replicate": "Replicate", "circular": "Circular",
               "nopad": "No padding"}
MODE_COLORS = dict(zip(MODES, sns.color_palette("colorblind")[2:7]))  # distinct from robust/normal
def mode_of(model_string: str) -> str:
    from filterdb.training import parse_model_string
    padding = parse_model_string(model_string).padding
    return "nopad" if padding == "none" else padding


# ---------------------------------------------------------------------------- evaluation results

def load_results(db_path: Path) -> list[dict]:
    """One entry per model of the database with evaluation results: its name, mode, results and maps.
    Models whose maps cannot be read (moved, or of other weights) are left out with a note on stderr."""
    from filterdb.evaluation_files import load_perturbation_maps, with_ratios

    with _style.open_db(db_path) as db:
        models = db.models
    results = []
    for _, row in models[models["evaluation_json"].fillna("") != ""].iterrows():
        summary = with_ratios(json.loads(row["evaluation_json"]))
        try:
            maps = load_perturbation_maps(summary.get("checkpoint", ""))
            mode = mode_of(row["model_string"] or summary.get("model_string", ""))
        except FilterDBError as exc:
            print(f"padding figure: {row['name']}: {exc}; left out", file=sys.stderr)
            continue
        results.append({"name": row["name"], "mode": mode, "summary": summary, "maps": maps})
    return results


def choose_key(results: list[dict], attack: str | None, budget: tuple[str, float] | None) -> tuple[str, str, str]:
    """The (attack, norm, eps_label) shown: among those every result has and that match the
    options, the first PGD one, else the first (in the first result's order)."""
    from filterdb.eps import format_eps

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
    from filterdb.training.attack_specs import parse_threat

    p = _style.parser(__doc__)
    p.add_argument("--attack", default=None, help="attack of the results, e.g. pgd-20 [default: PGD if evaluated]")
    p.add_argument("--budget", default=None, help="budget of the results, NORM:EPS, e.g. Linf:8/255")
    p.add_argument("--frame", type=int, default=1, help="width in pixels of the border frame [default: 1]")
    args = p.parse_args(argv)
    _style.apply_style()
    try:
        budget = parse_threat(args.budget)
    except FilterDBError as exc:
        raise SystemExit(str(exc)) from None
    db_path = args.db or padding_models.default_db()  # not the demo database: see padding_models.py
    results = load_results(db_path)
    if not results:
        raise SystemExit(f"no evaluated checkpoints in {db_path} (models with evaluation_json and their perturbation "
                         "maps): add checkpoints evaluated by 'filterdb evaluate' (one or more per padding mode) with "
                         "'filterdb build --checkpoints', or run figures/padding_models.py")
    key = choose_key(results, args.attack, budget)
    modes = by_mode([per_model(r, key, args.frame) for r in results], args.frame)
    return _style.save(plot(modes, key, args.frame), args.out, NAME)


if __name__ == "__main__":
    main()
