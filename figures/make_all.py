"""Regenerate every figure into one folder (default figures/out), PNG and PDF.

Without --db it uses the demo database, building it first (the real demo build: 3
matched pairs trained on digits, cached under $FILTERDB_HOME) if it does not exist yet.
The padding figure is drawn from the evaluated models of --padding-db (else of --db); without
either, ``padding_models.py`` runs first: it trains and evaluates the demo's padding variants
where missing (about 10 s on 2 CPU cores) and adds them to $FILTERDB_HOME/figures/padding-db.
Each figure is one script of this folder; this
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

    python figures/make_all.py [--db DB] [--out DIR] [--only NAME ...] [--padding-db DB]
"""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _style  # noqa: E402
import padding_models  # noqa: E402

FIGURES = ("metrics_by_depth", "divergence_by_depth", "pca_basis", "filter_grids", "first_stage_activation",
           "padding_perturbation")


def build_demo(path: Path) -> None:
    from filterdb.build import build
    from filterdb.cli.catalog import leaderboard_specs
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
    p.add_argument("--padding-db", type=Path, default=None,
                   help="database of evaluated padding variants for the padding figure (see padding_models.py) "
                        "[default: --db if given, else the demo's variants: python figures/padding_models.py, run first]")
    args = p.parse_args(argv)
    if args.db is None:
        build_demo(paths.demo_db_path())
    names = args.only or FIGURES
    common = ["--out", str(args.out)] + (["--db", str(args.db)] if args.db else [])
    argvs = {name: common for name in names}
    if "padding_perturbation" in names:
        padding_db = args.padding_db or args.db or padding_models.main([])  # trains and evaluates what is missing
        argvs["padding_perturbation"] = ["--out", str(args.out), "--db", str(padding_db)]
    written, failed = [], {}
    for name in names:
        start = time.perf_counter()
        module = importlib.import_module(name)
        try:
            written += module.main(argvs[name])
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
