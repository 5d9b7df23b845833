"""Evaluation results as files and as model-table columns: what training writes and the database reads.

``filterdb evaluate`` (``filterdb.training.evaluation``) writes, beside the checkpoint ``run/best.pt``:

    run/best.pt.eval.json   the results (format ``RESULTS_FORMAT``), strict JSON: non-finite
                            numbers are null (a border ratio is border_mean / interior_mean)
    run/best.pt.eval.h5     the perturbation maps: float16 (H, W) datasets /maps/0, /maps/1, ...
                            with attributes attack, norm, eps, eps_label, n_samples

Ingestion turns them into model-table columns (``evaluation_record``: ``evaluation_json`` and the
headline accuracies); figures and the CLI read them back (``load_evaluation``, ``evaluation_frame``,
``load_perturbation_maps``). numpy, pandas and h5py only.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from filterdb.atomic import atomic_path
from filterdb.eps import format_eps, parse_eps
from filterdb.errors import FilterDBError
from filterdb.integrity import sha256_file
from filterdb.output import json_safe
from filterdb.versions import check_readable

RESULTS_FORMAT = "filterdb-evaluation"
MAPS_FORMAT = "filterdb-perturbation-maps"
FORMAT_VERSION = "1.0"


def evaluation_path(checkpoint: str | Path) -> Path:
    """``run/best.pt`` -> ``run/best.pt.eval.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".eval.json")


def maps_path(checkpoint: str | Path) -> Path:
    """``run/best.pt`` -> ``run/best.pt.eval.h5``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".eval.h5")


def ratio(border_mean: float | None, interior_mean: float | None) -> float:
    """border / interior with the edge cases of the module docstring (None reads as NaN)."""
    border = math.nan if border_mean is None else float(border_mean)
    interior = math.nan if interior_mean is None else float(interior_mean)
    if math.isnan(border) or math.isnan(interior):
        return math.nan
    if interior == 0:
        return math.inf if border > 0 else math.nan
    return border / interior


def _atomic(path: Path, write) -> None:
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except OSError as exc:
        raise FilterDBError(f"{path}: cannot write evaluation results ({exc.strerror or exc}); "
                            f"make the checkpoint's directory writable") from None


def save_evaluation(summary: dict, maps: dict[tuple[str, str, str], np.ndarray],
                    checkpoint: str | Path) -> tuple[Path, Path]:
    """Write ``<checkpoint>.eval.h5`` (the maps, (attack, norm, eps_label) -> (H, W)) and then
    ``<checkpoint>.eval.json`` (the results), each atomically."""
    checkpoint = Path(checkpoint)
    json_path, h5_path = evaluation_path(checkpoint), maps_path(checkpoint)
    rows = {(a["attack"], a["norm"], a["eps_label"]): a for a in summary["attacks"]}

    def write_maps(tmp: Path):
        with h5py.File(tmp, "w") as f:
            f.attrs["format"], f.attrs["format_version"] = MAPS_FORMAT, FORMAT_VERSION
            f.attrs["checkpoint_sha256"] = summary.get("checkpoint_sha256", "")
            group = f.create_group("maps")
            for i, ((attack, norm, label), pmap) in enumerate(maps.items()):
                ds = group.create_dataset(str(i), data=np.asarray(pmap, dtype=np.float16))
                row = rows.get((attack, norm, label))
                ds.attrs.update(attack=attack, norm=norm, eps=float(row["eps"] if row else parse_eps(label)),
                                eps_label=label, n_samples=int(row["perturbation"]["n_samples"] if row else 0))

    def write_json(tmp: Path):
        with open(tmp, "w") as fh:
            json.dump(json_safe(summary), fh, indent=1, allow_nan=False)
            fh.write("\n")

    _atomic(h5_path, write_maps)
    _atomic(json_path, write_json)
    return json_path, h5_path


def _json_file(path: str | Path) -> Path:
    path = Path(path)
    return path if path.name.endswith(".eval.json") else evaluation_path(path)


def load_evaluation(path: str | Path, verify: bool = True) -> dict:
    """The results of a checkpoint (give the checkpoint or its ``.eval.json``), border
    ratios restored from their means (inf where the interior is untouched). With
    ``verify``, results of other weights than the checkpoint's (retrained since) are an error."""
    json_path = _json_file(path)
    if not json_path.is_file():
        raise FilterDBError(f"{json_path}: no evaluation results; run 'filterdb evaluate {json_path.name[:-10]}'")
    try:
        summary = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        raise FilterDBError(f"{json_path}: unreadable evaluation results ({exc}); run 'filterdb evaluate' again") from None
    if summary.get("format") != RESULTS_FORMAT:
        raise FilterDBError(f"{json_path}: not a filterdb evaluation file")
    check_readable(summary.get("format_version", FORMAT_VERSION), FORMAT_VERSION, f"{json_path}: evaluation format")
    checkpoint = json_path.with_name(json_path.name[: -len(".eval.json")])
    if verify and checkpoint.is_file() and summary.get("checkpoint_sha256"):
        if sha256_file(checkpoint) != summary["checkpoint_sha256"]:
            raise FilterDBError(f"{json_path}: the results belong to earlier weights of {checkpoint.name} (its "
                                f"sha256 changed); run 'filterdb evaluate {checkpoint}' again")
    return with_ratios(summary)


def with_ratios(summary: dict) -> dict:
    """``summary`` (as a results file or the model table's ``evaluation_json`` holds it) with every
    border ratio restored from its means (inf where the interior is untouched)."""
    for attack in summary.get("attacks", []):
        for b in attack["perturbation"]["border"]:
            b["ratio"] = ratio(b["border_mean"], b["interior_mean"])
    return summary


def load_perturbation_maps(path: str | Path, verify: bool = True) -> dict[tuple[str, str, str], np.ndarray]:
    """(attack, norm, eps_label) -> float16 (H, W) perturbation map, e.g.
    ``maps[("pgd-20", "Linf", "8/255")]``; give the checkpoint or its ``.eval.h5``. With
    ``verify``, maps of other weights than the checkpoint's (retrained since) are an error."""
    path = Path(path)
    h5_path = path if path.name.endswith(".eval.h5") else maps_path(path)
    if not h5_path.is_file():
        raise FilterDBError(f"{h5_path}: no perturbation maps; run 'filterdb evaluate' on the checkpoint")
    checkpoint = h5_path.with_name(h5_path.name[: -len(".eval.h5")])
    try:
        f = h5py.File(h5_path, "r")
    except OSError as exc:
        raise FilterDBError(f"{h5_path}: unreadable perturbation maps ({exc}); run 'filterdb evaluate' again") from None
    with f:
        if f.attrs.get("format") != MAPS_FORMAT or "maps" not in f:
            raise FilterDBError(f"{h5_path}: not a filterdb perturbation-maps file")
        check_readable(f.attrs.get("format_version", FORMAT_VERSION), FORMAT_VERSION, f"{h5_path}: perturbation-maps format")
        sha = f.attrs.get("checkpoint_sha256", "")
        if verify and sha and checkpoint.is_file():
            if sha256_file(checkpoint) != sha:
                raise FilterDBError(f"{h5_path}: the maps belong to earlier weights of {checkpoint.name} (its "
                                    f"sha256 changed); run 'filterdb evaluate {checkpoint}' again")
        return {(str(ds.attrs["attack"]), str(ds.attrs["norm"]), str(ds.attrs["eps_label"])): ds[()]
                for _, ds in sorted(f["maps"].items(), key=lambda kv: int(kv[0]))}


def evaluation_frame(summary: dict) -> pd.DataFrame:
    """One row per attack and budget (then the worst case per budget when several attacks ran,
    then the spatial grid): accuracy, fooling rate, border ratios (columns border_b1, ...)."""
    base = {"checkpoint": Path(summary.get("checkpoint", "")).name, "model": summary.get("model_string", ""),
            "clean_acc": summary["clean_acc"]}
    widths = summary["config"]["border_widths"]
    rows = []
    for a in summary["attacks"]:
        ratios = {f"border_b{b['width']}": ratio(b["border_mean"], b["interior_mean"]) for b in a["perturbation"]["border"]}
        rows.append({**base, "attack": a["attack"], "threat_model": a["norm"], "eps": a["eps_label"],
                     "robust_acc": a["robust_acc"], "fooling_rate": a["fooling_rate"],
                     "n_perturbed": a["perturbation"]["n_samples"], **ratios})
    for b in summary.get("budgets", []):
        if len(b["attacks"]) > 1:
            rows.append({**base, "attack": "worst case", "threat_model": b["norm"], "eps": b["eps_label"],
                         "robust_acc": b["robust_acc"], "fooling_rate": math.nan, "n_perturbed": math.nan})
    sp = summary.get("spatial")
    if sp:
        attack = sp["attack"]
        label = "spatial" + (f"+pgd-{attack['steps']}" if attack else "")
        rows.append({**base, "attack": label, "threat_model": f"grid x{len(sp['grid'])} {sp['fill']}",
                     "eps": format_eps(attack["eps"]) if attack else "", "robust_acc": sp["worst_case_acc"],
                     "fooling_rate": sp["any_fooling_rate"], "n_perturbed": math.nan})
    columns = ["checkpoint", "model", "attack", "threat_model", "eps", "clean_acc", "robust_acc", "fooling_rate",
               "n_perturbed", *[f"border_b{w}" for w in widths]]
    return pd.DataFrame(rows, columns=columns)


def evaluation_record(checkpoint: str | Path, training_metrics: dict | None = None) -> dict:
    """Model-table columns from the evaluation beside a checkpoint; {} when there is none
    (or it belongs to earlier weights: then with a warning).

    evaluation_json: the complete results as compact JSON (border ratios as means), with the
    number of test images they were measured on (``n_samples``). The headline budget's
    threat_model, eps, robust_acc (worst case over the attacks run), robust_attack (their
    names joined by '+', e.g. "pgd-20+cw-20+autoattack") and clean_acc replace the training
    run's figures (``training_metrics``: the checkpoint's test metrics) only when the
    evaluation covered at least as many test images as the training run measured on
    (``n_eval``) or the training run has no such figure: a 50-image evaluation never
    overwrites a full-test accuracy.
    """
    if not evaluation_path(checkpoint).is_file():
        return {}
    try:
        summary = load_evaluation(checkpoint)
    except FilterDBError as exc:
        warnings.warn(f"evaluation results ignored: {exc}", stacklevel=2)
        return {}
    record = {"evaluation_json": json.dumps(json_safe(summary), separators=(",", ":"), allow_nan=False)}
    training_metrics = training_metrics or {}
    covers = summary["n_samples"] >= int(training_metrics.get("n_eval") or 0)
    if covers or training_metrics.get("clean_acc") is None:
        record["clean_acc"] = summary["clean_acc"]
    top = summary.get("headline")
    if top and (covers or training_metrics.get("robust_acc") is None):
        record.update(threat_model=top["threat_model"], eps=top["eps"], robust_acc=top["robust_acc"],
                      robust_attack=top["robust_attack"])
    return record
