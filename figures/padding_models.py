"""The padding figure's models: cnn3-16 padding variants trained on digits, evaluated, stored in a database.

For every padding mode (zeros, reflect, replicate, circular, nopad) without a finished
checkpoint under --models [default: $FILTERDB_HOME/figures/padding-models], trains
``cnn3-16_<mode>`` on digits (standard training, seed 0, 8 epochs, as ``filterdb train``);
evaluates every checkpoint there that has no results for the figure's attack (L2 PGD-10 at
eps 1 on the 360 test images, as ``filterdb evaluate``); then adds them all, evaluation results
included, to the database --db [default: $FILTERDB_HOME/figures/padding-db], as ``filterdb
build --checkpoints`` does. About 10 s on 2 CPU cores the first time; a rerun only re-adds.
``padding_perturbation.py --db`` then draws the figure from that database.

    python figures/padding_models.py [--db DIR] [--models DIR] [--epochs N]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from filterdb import paths
from filterdb.errors import FilterDBError

MODES = ("zeros", "reflect", "replicate", "circular", "nopad")
MODEL = "cnn3-16"
EPOCHS = 8
EVALUATION = {"attacks": "pgd-10", "linf": (), "l2": (1.0,), "spatial": False, "border_widths": (1, 2),
              "n_samples": 1000, "seed": 0}
KEY = ("pgd-10", "L2", "1")  # (attack, norm, eps label) of EVALUATION's results


def default_models_dir() -> Path:
    return paths.home() / "figures" / "padding-models"


def default_db() -> Path:
    return paths.home() / "figures" / "padding-db"


def _finished(path: Path) -> bool:
    from filterdb.training import load_checkpoint
    try:
        return "clean_acc" in load_checkpoint(path).metrics
    except FilterDBError:
        return False


def _evaluated(path: Path, key: tuple[str, str, str]) -> bool:
    """Whether ``path`` has evaluation results of its current weights that include ``key``."""
    from filterdb.evaluation_files import load_evaluation, maps_path
    try:
        summary = load_evaluation(path)
    except FilterDBError:
        return False
    return maps_path(path).is_file() and any((a["attack"], a["norm"], a["eps_label"]) == key
                                             for a in summary.get("attacks", []))


def train_and_evaluate(directory: Path, epochs: int = EPOCHS) -> None:
    """Train ``cnn3-16_<mode>`` for every mode without a finished checkpoint under ``directory``, and
    evaluate every checkpoint there without results for ``KEY``."""
    from filterdb.training import TrainConfig, train
    from filterdb.training.evaluation import evaluate_checkpoint
    from filterdb.training.evaluation_config import EvaluationConfig

    for mode in MODES:
        out = directory / mode
        if not _finished(out / "last.pt"):
            print(f"padding models: training {MODEL}_{mode} on digits ...", flush=True)
            train(TrainConfig(model_string=f"{MODEL}_{mode}", dataset="digits", method="standard",
                              epochs=epochs, batch_size=64, lr=0.05, seed=0), out)
    for path in sorted(directory.rglob("*.pt")):
        if not _evaluated(path, KEY):
            print(f"padding models: evaluating {path.relative_to(directory)} (L2 PGD-10, eps 1) ...", flush=True)
            evaluate_checkpoint(path.resolve(), EvaluationConfig(**EVALUATION))


def store(directory: Path, db_path: Path) -> None:
    """Add every checkpoint under ``directory`` to the database, with its evaluation results (again,
    so that results evaluated after an earlier add replace the old row)."""
    from filterdb.build import build
    from filterdb.store import FilterDB
    from filterdb.training.checkpoint_source import checkpoint_dir_specs

    with FilterDB.open(db_path, "a") as db:
        report = build(db, checkpoint_dir_specs(directory.resolve()), force=True, show_progress=False,
                       description="padding models")
    if report.failed:
        raise SystemExit("padding models: " + "; ".join(o.error for o in report.failed))


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, default=None, help="database to add them to [default: $FILTERDB_HOME/figures/padding-db]")
    p.add_argument("--models", type=Path, default=None,
                   help="folder of the checkpoints [default: $FILTERDB_HOME/figures/padding-models]")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs [default: {EPOCHS}]")
    args = p.parse_args(argv)
    directory, db_path = args.models or default_models_dir(), args.db or default_db()
    train_and_evaluate(directory, args.epochs)
    store(directory, db_path)
    return db_path


if __name__ == "__main__":
    main()
