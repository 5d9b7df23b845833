"""How a comparison reads: on the terminal, as a figure, as HTML. The one place that presents a
:class:`~filterdb.analysis.compare.Comparison` (which only computes): ``filterdb compare``, the
demo, the notebook (``Comparison._repr_html_``) and ``filterdb report`` all draw from here.

Terminal tables go through :func:`filterdb.output.emit` (fitted to the width, columns by priority);
the statistics table has one row per layer group and metric, the paired test beside the unpaired.
"""
from __future__ import annotations

import base64
import io
import math
from html import escape

import numpy as np
import pandas as pd

from filterdb.analysis.compare import CONFIDENCE, Comparison
from filterdb.output import emit, say

# The terminal's statistics table: what a narrow terminal keeps first (filterdb.output.fit_columns).
STATISTICS_PRIORITY = ["by", "layers", "metric", "A", "B", "A-B", "p MWU", "p Wilcoxon", "95% CI", "d",
                       "paired 95% CI", "perm p", "twin perm p", "p Holm", "paired p Holm", "n"]
DIVERGENCE_PRIORITY = ["by", "layers", "D", "null median", "perm p", "twin null median", "twin p", "kernel",
                       "p Holm", "models", "filters", "note"]
STATISTICS_LEGEND = ("p (MWU) = Mann-Whitney U, p Wilcoxon = signed-rank over the pairs, d = Cliff's delta; "
                     f"{CONFIDENCE:.0%} CI: bootstrap of A - B; perm p: permutation null ({{perm}}); p Holm: "
                     "over metrics x layer groups")
DIVERGENCE_LEGEND = ("D = sum_i EVR_i (KL(p_i||q_i) + KL(q_i||p_i)) of the groups' filters (basis: {basis}); "
                     "null median and perm p: D with the model labels shuffled; twin: shuffled within pairs")


def number(value, digits: int = 3) -> str:
    """A statistic as a table shows it: ``digits`` significant digits, nan as an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{float(value):.{digits}g}"


def interval(lo: float, hi: float, note: str = "") -> str:
    """A confidence interval, compact: ``[-0.011, 0.0029]``; the note where there is none."""
    if lo is None or math.isnan(lo):
        return note or ""
    return f"[{lo:.2g}, {hi:.2g}]"


def _keys(result: Comparison) -> list[str]:
    keys = ["by"] if result.by else []
    if result.tests["layers"].nunique() > 1 or result.by:
        keys.append("layers")
    return keys


def statistics_table(result: Comparison) -> pd.DataFrame:
    """One row per layer group and metric: group means, A - B with its interval and both tests."""
    keys = _keys(result)
    rows = []
    for _, t in result.tests.iterrows():
        paired = t["n_pairs"] > 0
        rows.append({**{k: str(t[k]) for k in keys}, "metric": t["metric"],
                     "A": number(t["mean_a"]), "B": number(t["mean_b"]), "A-B": number(t["difference"]),
                     "95% CI": interval(t["ci_low"], t["ci_high"], t["note"]), "p MWU": number(t["p_value"]),
                     "d": number(t["cliffs_delta"], 2),
                     "paired 95% CI": interval(t["paired_ci_low"], t["paired_ci_high"]) if paired else "",
                     "p Wilcoxon": number(t["paired_p_value"]) if paired else "",
                     "perm p": number(t["perm_p"]), "twin perm p": number(t["paired_perm_p"]) if paired else "",
                     "p Holm": number(t["p_holm"]), "paired p Holm": number(t["paired_p_holm"]) if paired else "",
                     "n": f"{t['n_a']} vs {t['n_b']}" + (f", {t['n_pairs']} pairs" if paired else "")})
    frame = pd.DataFrame(rows)
    if len(frame) and not (result.tests["n_pairs"] > 0).any():
        frame = frame.drop(columns=["paired 95% CI", "p Wilcoxon", "twin perm p", "paired p Holm"])
    return frame


def divergence_table(result: Comparison) -> pd.DataFrame:
    """The divergence and its nulls, short: one row per layer group and kernel."""
    d = result.divergence
    keys = _keys(result)
    rows = []
    for _, r in d.iterrows():
        rows.append({**{k: str(r[k]) for k in keys}, "kernel": r["kernel"], "D": number(r["divergence"]),
                     "null median": number(r["perm_null_median"]), "perm p": number(r["perm_p"]),
                     "twin null median": number(r["paired_perm_null_median"]), "twin p": number(r["paired_perm_p"]),
                     "p Holm": number(r["perm_p_holm"]), "models": f"{r['models_a']} vs {r['models_b']}",
                     "filters": f"{r['filters_a']} vs {r['filters_b']}", "note": r["note"]})
    frame = pd.DataFrame(rows)
    if len(frame) and (frame["twin p"] == "").all():
        frame = frame.drop(columns=["twin null median", "twin p"])
    if len(frame) and (frame["note"] == "").all():
        frame = frame.drop(columns="note")
    return frame


def pairs_table(result: Comparison) -> pd.DataFrame:
    """Per matched pair: A's and B's model names and the difference A - B of each metric."""
    keys = _keys(result) + ["pair"]
    p = result.pairs
    wide = p.pivot_table(index=keys, columns="metric", values="difference", observed=True, sort=False).reset_index()
    names = dict(zip(result.models["model_id"], result.models["name"]))
    first = p.drop_duplicates(keys).set_index(keys)
    at = [tuple(k) if len(keys) > 1 else k[0] for k in wide[keys].to_numpy()]
    wide.insert(len(keys) - 1, "A model", [names.get(first.loc[k, "model_a"], "") for k in at])
    wide.insert(len(keys), "B model", [names.get(first.loc[k, "model_b"], "") for k in at])
    for metric in set(p["metric"]):
        wide[metric] = [number(v) for v in wide[metric]]
    return wide


def group_lines(result: Comparison, labels: tuple[str, str] | None = None) -> list[str]:
    """``A = robust: 16 models, 192 filters`` for each group (of the first layer group)."""
    labels = labels or (result.group_a, result.group_b)
    lines = []
    g = result.groups
    for side, group, label in (("A", result.group_a, labels[0]), ("B", result.group_b, labels[1])):
        rows = g[g["group"] == group]
        if len(rows) and rows["layers"].nunique() == 1:
            r = rows.iloc[0]
            lines.append(f"{side} = {label}: {r['models']} models, {r['filters']} filters")
        else:
            lines.append(f"{side} = {label}")
    return lines


def permutation_words(result: Comparison) -> str:
    t = result.tests
    exact = t.loc[t["perm_exact"].astype(bool), "n_permutations"]
    if len(exact) and len(exact) == len(t):
        return f"exact, all {int(exact.iloc[0])} labelings"
    return f"{result.permutations} label shuffles over models; within pairs for paired rows"


def heading(result: Comparison, labels: tuple[str, str] | None = None) -> str:
    a, b = labels or (result.group_a, result.group_b)
    return f"{a} vs {b}, layers: {result.layer}, kernel: {result.kernel}, aggregate: {result.aggregate}"


def emit_comparison(result: Comparison, fmt: str = "table", file=None, max_pair_rows: int = 60,
                    labels: tuple[str, str] | None = None, pairs: bool = True, notes: bool = True) -> None:
    """Print a comparison: on the terminal its groups, statistics, per-pair differences (``pairs``)
    and divergence, fitted to the width; else one flat CSV/JSON table with every column."""
    if fmt != "table":
        emit(result.to_frame(), fmt, file=file)
        return
    say("\n".join([heading(result, labels), *group_lines(result, labels)]), file=file)
    if result.groups["layers"].nunique() > 1:
        groups = result.groups[[c for c in result.groups.columns if not c.endswith((" mean", " std", " median"))]]
        emit(groups, "table", file=file)
    emit(statistics_table(result), "table", file=file, priority=STATISTICS_PRIORITY,
         title=STATISTICS_LEGEND.format(perm=permutation_words(result)))
    if pairs and len(result.pairs) and len(result.pairs) <= max_pair_rows * len(set(result.pairs["metric"])):
        emit(pairs_table(result), "table", title="Per-pair differences A - B", file=file,
             priority=["layers", "A model", "ve_linf", "orthogonality", "sparsity", "l2_norm", "l1_norm"])
    if len(result.divergence):
        emit(divergence_table(result), "table", file=file, priority=DIVERGENCE_PRIORITY,
             title=DIVERGENCE_LEGEND.format(basis=result.basis))
    if notes and result.notes:
        say("; ".join(result.notes), file=file)


# ---------------------------------------------------------------------------- HTML

def html_table(frame: pd.DataFrame, caption: str | None = None) -> str:
    """A DataFrame as an HTML table (numbers to 4 significant digits), for the notebook and the report."""
    body = frame.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, classes="filterdb")
    if caption:
        body = body.replace(">\n", f">\n<caption>{escape(caption)}</caption>\n", 1)
    return body


def comparison_html(result: Comparison, labels: tuple[str, str] | None = None) -> str:
    """A comparison as HTML: the groups, the statistics (one row per metric and test) and the divergence."""
    groups = result.groups[[c for c in result.groups.columns if not c.endswith((" mean", " std", " median"))]]
    a, b = labels or (result.group_a, result.group_b)
    parts = [f"<h4>A = {escape(a)}, B = {escape(b)}: "
             f"layers {escape(result.layer)}, kernel {escape(result.kernel)}, aggregate {escape(result.aggregate)}</h4>",
             html_table(groups), "<p><b>A - B</b> (unpaired: Mann-Whitney U, bootstrap CI, Cliff's delta; paired: "
             "Wilcoxon signed-rank; perm p: permutation null; p Holm over metrics x layer groups)</p>",
             html_table(result.display())]
    if len(result.divergence):
        parts += [f"<p><b>Divergence</b> of the groups' filters (basis: {escape(result.basis)})</p>",
                  html_table(result.divergence.drop(columns=["perm_exact"], errors="ignore"))]
    parts.append(f"<p><small>{escape('; '.join(result.notes))}</small></p>")
    return "\n".join(parts)


def figure_html(fig, alt: str) -> str:
    """A matplotlib Figure as an <img> with its PNG inline (base64): no file beside the page, no network."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{escape(alt)}</figcaption></figure>'


# ---------------------------------------------------------------------------- figures

def plot_comparison(result: Comparison, path=None):
    """One panel per metric: mean ± std over models of each group, per layer group; saved to ``path``
    (written under a temporary name) when given. Returns the Figure (a notebook shows it); it is
    not registered with pyplot, so no backend is touched and nothing needs closing."""
    from matplotlib.figure import Figure
    t = result.tests
    metrics = list(dict.fromkeys(t["metric"]))
    fig = Figure(figsize=(3.2 * len(metrics), 3.2))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = t[t["metric"] == metric]
        x = np.arange(len(rows))
        for side, name, shift in (("a", result.group_a, -0.1), ("b", result.group_b, 0.1)):
            ax.errorbar(x + shift, rows[f"mean_{side}"], yerr=rows[f"std_{side}"].fillna(0), fmt="o-", capsize=3,
                        label=name)
        ax.set_xticks(x, rows["layers"].astype(str), rotation=45 if len(rows) > 3 else 0, ha="right", fontsize=7)
        ax.set_title(metric)
    axes[0][0].legend()
    fig.suptitle(f"{result.group_a} vs {result.group_b} (each model counts once)", fontsize=9)
    fig.tight_layout()
    if path is not None:
        from filterdb.analysis.filter_plots import save_figure
        save_figure(fig, path)
    return fig


def plot_divergence(result: Comparison):
    """The divergence per layer group with its null: the median of D under shuffled labels (and
    shuffled within pairs where there are pairs), the observed D marked with its permutation p."""
    from matplotlib.figure import Figure
    d = result.divergence
    fig = Figure(figsize=(max(4.0, 0.7 * len(d) + 2), 3.2))
    ax = fig.subplots()
    x = np.arange(len(d))
    ax.plot(x, d["divergence"], "o-", label="D (observed)")
    ax.plot(x, d["perm_null_median"], "s--", color="grey", label="null median (labels shuffled)")
    if d["paired_perm_null_median"].notna().any():
        ax.plot(x, d["paired_perm_null_median"], "^:", color="black", label="null median (within pairs)")
    for xi, (dv, p) in enumerate(zip(d["divergence"], d["perm_p"])):
        if not math.isnan(dv):
            ax.annotate(f"p={number(p, 2)}", (xi, dv), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=7)
    labels = [f"{a} {k}" if d["kernel"].nunique() > 1 else str(a) for a, k in zip(d["layers"], d["kernel"])]
    ax.set_xticks(x, labels, rotation=45 if len(d) > 3 else 0, ha="right", fontsize=7)
    ax.set_ylabel("divergence D")
    ax.set_title(f"{result.group_a} vs {result.group_b}: divergence by layer group (basis {result.basis})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_first_layer(filters: np.ndarray, out_channels: int, title: str):
    """A first layer's filters as one grid (output channels down, input channels across), one diverging scale."""
    from matplotlib.figure import Figure

    from filterdb.analysis.filter_plots import layer_mosaic
    image, rows, cols = layer_mosaic(filters, out_channels)
    scale = float(np.nanmax(np.abs(filters))) if filters.size else 1.0
    fig = Figure(figsize=(min(8, 1.5 + 0.3 * cols * (filters.shape[2] + 1)), min(8, 1 + 0.3 * rows * (filters.shape[1] + 1))))
    ax = fig.subplots()
    shown = ax.imshow(image, cmap="RdBu_r", vmin=-(scale or 1.0), vmax=scale or 1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"input channel ({cols} shown)", fontsize=7)
    ax.set_ylabel(f"output channel ({rows} of {out_channels})", fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.colorbar(shown, ax=ax, shrink=0.6)
    fig.tight_layout()
    return fig


def divergence_line(result: Comparison) -> str:
    """The divergence of a comparison with one layer group, in one line: D, its null, the twins' null."""
    lines = []
    for _, r in result.divergence.iterrows():
        text = (f"Divergence D = {number(r['divergence'])} ({r['kernel']}; null median {number(r['perm_null_median'])}, "
                f"perm p {number(r['perm_p'])}")
        if not math.isnan(r["paired_perm_p"]):
            text += f"; within pairs: null median {number(r['paired_perm_null_median'])}, p {number(r['paired_perm_p'])}"
        lines.append(text + ")" + (f" {r['note']}" if r["note"] else ""))
    return "\n".join(lines)


def emit_headline(result: Comparison, file=None, labels: tuple[str, str] | None = None, legend: bool = True) -> None:
    """A comparison in a few lines: the groups, the statistics table, the divergence in one line."""
    say("\n".join([heading(result, labels), *group_lines(result, labels)]), file=file)
    emit(statistics_table(result), "table", file=file, priority=STATISTICS_PRIORITY,
         title=STATISTICS_LEGEND.format(perm=permutation_words(result)) if legend else None)
    if len(result.divergence):
        say(divergence_line(result), file=file)
