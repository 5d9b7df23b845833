"""Regenerate every figure into one folder (default figures/out), PNG and PDF.

Without --db it uses the demo database, building it first (the real demo build: 3
matched pairs trained on digits, cached under $FILTERDB_HOME) if it does not exist yet.
The padding figure is drawn from evaluation results, not from the database: from the
checkpoints under --padding-models if given, else from the demo's padding variants,
trained and evaluated on first use (about 10 s on 2 CPU cores) and cached under
$FILTERDB_HOME/figures/padding-models. Each figure is one script of this folder; this
runs them in-process, one after the other (about 10 s on 2 CPU cores once the demo
database exists):

| script                        | figure |
|-------------------------------|--------|
| metrics_by_depth.py           | sparsity, variance entropy, orthogonality by depth, robust vs normal |
| divergence_by_depth.py        | robust vs normal divergence per depth decile |
| pca_basis.py                  | PCA basis of 3x3 filters and cumulative explained variance |
| filter_grids.py               | first-layer and deep-layer filters of a robust and a normal model |
| first_stage_activation.py     | clean vs adversarial input through the first convolution + ReLU |
| padding_perturbation.py       | mean perturbation per pixel per padding mode, border ratio |

    python figures/make_all.py [--db DB] [--out DIR] [--only NAME ...] [--padding-models DIR]
"""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _style  # noqa: E402

FIGURES = ("metrics_by_depth", "divergence_by_depth", "pca_basis", "filter_grids", "first_stage_activation",
           "padding_perturbation")


def build_demo(path: Path) -> None:
    from filterdb.build import build
    from filterdb.sources import leaderboard_specs
    from filterdb.store import FilterDB

    if not (path / "filterdb.h5").exists():
        print(f"building the demo database at {path} (trains 16 small matched pairs on digits, about two minutes on 2 cores) ...", flush=True)
    with FilterDB.open(path, "a") as db:  # a complete database: every model skipped, instantly
        report = build(db, leaderboard_specs("demo"), show_progress=False, description="demo")
    if report.failed:
        raise SystemExit("the demo build failed: " + "; ".join(o.error for o in report.failed))


def main(argv=None) -> list[Path]:
    from filterdb import paths

    p = _style.parser(__doc__)
    p.add_argument("--only", action="append", choices=FIGURES, help="make only this figure (repeatable)")
    p.add_argument("--padding-models", type=Path, default=None,
                   help="evaluated checkpoints of the padding figure (see padding_perturbation.py) "
                        "[default: the demo's padding variants, trained and evaluated on first use]")
    args = p.parse_args(argv)
    if args.db is None:
        build_demo(paths.demo_db_path())
    common = ["--out", str(args.out)] + (["--db", str(args.db)] if args.db else [])
    extra = {"padding_perturbation": ["--models", str(args.padding_models)] if args.padding_models else ["--train"]}
    written, failed = [], {}
    for name in args.only or FIGURES:
        start = time.perf_counter()
        module = importlib.import_module(name)
        try:
            written += module.main(common + extra.get(name, []))
        except SystemExit as exc:  # a figure whose inputs are missing: say why, make the others
            failed[name] = str(exc.code)
            print(f"{name}: not made: {exc.code}", file=sys.stderr, flush=True)
            continue
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    print(f"{len(written)} files in {args.out}")
    if failed:
        raise SystemExit(f"{len(failed)} of {len(args.only or FIGURES)} figures not made: {', '.join(failed)}")
    return written


if __name__ == "__main__":
    main()
