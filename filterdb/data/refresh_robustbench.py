"""Regenerate filterdb/data/robustbench_models.csv: the leaderboard facts of every model in robustbench's zoo.

robustbench's package ships the model zoo (constructors, weight locations) but not the
leaderboard metadata. RobustBench publishes that as ``model_info/<dataset>/<threat>/<name>.json``
in its GitHub repository. This script joins the two: one row per model of the installed
zoo, with the facts filterdb's model table needs.

    python filterdb/data/refresh_robustbench.py --model-info /path/to/robustbench_model_info
    python filterdb/data/refresh_robustbench.py --github      # fetch model_info from GitHub (online)

A zoo model without its own model_info file (the corruptions leaderboards, when the
source has none) takes paper, venue, architecture and extra data from the entry of the
same name under another threat model of its dataset; its accuracies stay empty.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
import tarfile
import tempfile
import urllib.request
from fractions import Fraction
from pathlib import Path

GITHUB_TARBALL = "https://codeload.github.com/RobustBench/robustbench/tar.gz/refs/heads/master"
TABLE = Path(__file__).with_name("robustbench_models.csv")
COLUMNS = ("dataset", "threat_model", "name", "architecture", "convolutional", "ensemble_files", "training",
           "training_method", "eps", "clean_acc", "robust_acc", "robust_attack", "extra_data", "paper", "venue",
           "paper_url")
# Attention-based architectures: their leaderboards' convolutional subset leaves them out.
TRANSFORMER = re.compile(r"xcit|swin|vit|deit", re.IGNORECASE)


def parse_eps(text: str | None) -> str:
    """'8/255' -> '0.03137254901960784', '0.5' -> '0.5', missing -> ''."""
    if not text or text in ("N/A", "None"):
        return ""
    text = text.strip()
    if "/" in text:
        num, den = text.split("/")
        return repr(float(num) / float(den))
    return repr(float(Fraction(text)))


def number(text) -> str:
    try:
        return repr(float(text))
    except (TypeError, ValueError):
        return ""


def plain_text(text: str) -> str:
    """Venue strings carry HTML line breaks ('arXiv,<br>Oct 2020') and 'N/A' for none."""
    text = re.sub(r"\s*<br\s*/?>\s*", " ", text or "").strip()
    return "" if text == "N/A" else text


def read_model_info(root: Path) -> dict[tuple[str, str, str], dict]:
    """(dataset, threat_model, name) -> the published JSON of every model_info file under ``root``."""
    info = {}
    for path in root.glob("*/*/*.json"):
        dataset, threat = path.parts[-3], path.parts[-2]
        info[(dataset, threat, path.stem)] = json.loads(path.read_text())
    return info


def zoo_entries() -> list[tuple[str, str, str, int]]:
    """(dataset, threat_model, name, weight files) of every model in the installed robustbench zoo."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from filterdb.compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts

    entries = []
    for dataset, threats in model_dicts.items():
        for threat, models in threats.items():
            for name, entry in models.items():
                files = len(entry["gdrive_id"]) if isinstance(entry["gdrive_id"], list) else 1
                entries.append((dataset.value, threat.value, name, files))
    return entries


def table_row(dataset: str, threat: str, name: str, files: int, info: dict) -> dict:
    own = info.get((dataset, threat, name))
    borrowed: dict = own or next((v for (d, t, n), v in sorted(info.items()) if d == dataset and n == name), {})
    architecture = borrowed.get("architecture", "")
    standard = name.startswith("Standard")
    robust_attack = ""
    robust_acc = ""
    if own:
        if threat in ("Linf", "L2"):
            robust_acc, robust_attack = number(own.get("autoattack_acc")), "autoattack"
        elif own.get("corruptions_acc") is not None:
            robust_acc, robust_attack = number(own.get("corruptions_acc")), "corruptions"
    return {
        "dataset": dataset, "threat_model": threat, "name": name, "architecture": architecture,
        "convolutional": not TRANSFORMER.search(f"{architecture} {name}"), "ensemble_files": files,
        "training": "normal" if standard else "robust", "training_method": "standard" if standard else "",
        "eps": parse_eps(own.get("eps")) if own and threat in ("Linf", "L2") else "",
        "clean_acc": number(own.get("clean_acc")) if own else "", "robust_acc": robust_acc,
        "robust_attack": robust_attack, "extra_data": bool(borrowed.get("additional_data", False)),
        "paper": borrowed.get("name", ""), "venue": plain_text(borrowed.get("venue", "")),
        "paper_url": borrowed.get("link", ""),
    }


def write_table(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def fetch_github_model_info(into: Path) -> Path:
    """Download RobustBench's repository tarball and unpack its model_info folder under ``into``."""
    with urllib.request.urlopen(GITHUB_TARBALL, timeout=120) as response:
        data = response.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if "/model_info/" in m.name and m.name.endswith(".json")]
        tar.extractall(into, members=members, filter="data")
    return next(into.glob("*/model_info"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-info", type=Path, help="a local copy of RobustBench's model_info folder")
    source.add_argument("--github", action="store_true", help="fetch model_info from RobustBench's GitHub repo")
    parser.add_argument("--out", type=Path, default=TABLE, help=f"where to write the table [{TABLE.name}]")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = fetch_github_model_info(Path(tmp)) if args.github else args.model_info
        info = read_model_info(root)
    rows = [table_row(*entry, info) for entry in zoo_entries()]
    missing = [f"{r['dataset']}/{r['threat_model']}/{r['name']}" for r in rows if not r["clean_acc"]]
    write_table(rows, args.out)
    print(f"wrote {len(rows)} models to {args.out}; {len(missing)} without leaderboard accuracies"
          + (f" (e.g. {', '.join(missing[:3])})" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
