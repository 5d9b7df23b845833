"""``filterdb build``, ``add``, ``export``, ``info`` and ``demo``: filling a database and looking at it."""
from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import click

from filterdb import paths
from filterdb.cli.options import (
    db_option,
    format_option,
    input_shape_option,
    jobs_option,
    offline_option,
    resolve_db,
    scheduler_option,
    select_option,
    selected_models,
)
from filterdb.errors import FilterDBError
from filterdb.output import emit


def report_build(report, fmt: str = "table") -> None:
    """Print the build's summary table and exit non-zero if any model failed."""
    frame = report.to_frame()
    changed = frame[frame["status"] != "skipped"]
    if len(changed) > 1 or report.count("added") or report.count("repaired"):
        emit(changed.drop(columns="error") if not report.failed else changed, fmt, title="build summary")
    for outcome in report.outcomes:
        if outcome.status == "repaired":
            click.echo(f"repaired: {outcome.key}: extracted again, its shard was damaged ({outcome.note})", err=True)
    for outcome in report.failed:
        click.secho(f"error: {outcome.error}", fg="red", err=True)
    repaired = f"{report.count('repaired')} repaired, " if report.count("repaired") else ""
    click.echo(f"{report.count('added')} added, {repaired}{report.count('skipped')} already present, "
               f"{report.count('failed')} failed", err=True)
    if report.failed:
        sys.exit(1)


@contextmanager
def removed_if_left_empty(db_dir: Path):
    """A database directory this command creates is removed again if no model got committed
    into it (a failed ``add``/``build`` into a new path leaves nothing behind)."""
    created = not db_dir.exists()
    try:
        yield
    finally:
        if created and db_dir.is_dir() and not any((db_dir / "shards").glob("*.h5")):
            shutil.rmtree(db_dir, ignore_errors=True)


def report_skipped_convs(db, report) -> None:
    """One line per added model with modules that convolve but whose filters were not stored."""
    added = {o.model_id for o in report.outcomes if o.status == "added"}
    models = db.models
    for _, row in models[models.index.isin(added) & (models["skipped_convs"] != "")].iterrows():
        skipped = json.loads(row["skipped_convs"])
        kinds = Counter(s["class"] for s in skipped)
        what = ", ".join(f"{n} {cls}" for cls, n in kinds.most_common())
        click.echo(f"note: {row['key']}: {len(skipped)} convolution module(s) not stored ({what}: "
                   f"{skipped[0]['reason']}); the model table's skipped_convs lists them", err=True)


VERIFY_HELP = ("Before skipping a model already present, read its shard whole and check its tables and every "
               "layer's filters against their digests. Without it the check compares the shard's identity "
               "only (its size, model id and recorded digest against the master's index): a change inside "
               "the filter bytes is then not seen (readers still refuse it). A damaged shard is extracted "
               "again (reported 'repaired').")


@click.command()
@click.option("--leaderboard", "-l", default=None, help="Leaderboard to build ('filterdb leaderboards' lists them).")
@click.option("--checkpoints", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Ingest every filterdb training checkpoint (*.pt) under this directory.")
@click.option("--models", "-m", multiple=True, help="Only models whose name matches this glob (repeatable).")
@db_option
@click.option("--force", is_flag=True, help="Extract models again even if already in the database.")
@click.option("--verify", "verify", is_flag=True, help=VERIFY_HELP)
@jobs_option
@scheduler_option
@offline_option
@click.option("--model-dir", type=click.Path(path_type=Path), default=None,
              help="robustbench weights cache [default: $FILTERDB_MODEL_DIR or $FILTERDB_HOME/models].")
@click.option("--keep-weights/--no-keep-weights", default=True, show_default=True,
              help="Keep each downloaded weights file once its filters are stored.")
@input_shape_option
def build(leaderboard, checkpoints, models, db_path, force, verify, jobs, scheduler, offline, model_dir,
          keep_weights, input_shape):
    """Build (or complete) a filter database from a leaderboard or a checkpoint directory.

    Models already in the database are skipped once their shard is found whole (see --verify), so a
    rerun resumes an interrupted build and extracts damaged shards again.
    """
    from filterdb.build import build as run_build
    from filterdb.cli.catalog import leaderboard_specs
    from filterdb.sources import select_specs
    from filterdb.sources.base import with_input_shape
    from filterdb.store import FilterDB

    if (leaderboard is None) == (checkpoints is None):
        raise FilterDBError("give exactly one of --leaderboard NAME or --checkpoints DIR")
    if leaderboard is not None:
        specs = leaderboard_specs(leaderboard, models, offline=offline, keep_weights=keep_weights,
                                  model_dir=model_dir or paths.robustbench_model_dir())
    else:
        from filterdb.training.checkpoint_source import checkpoint_dir_specs
        specs = select_specs(checkpoint_dir_specs(checkpoints), models, where=str(checkpoints))
    specs = with_input_shape(specs, input_shape)
    db_dir = resolve_db(db_path)
    with removed_if_left_empty(db_dir), FilterDB.open(db_dir, "a", heal=[s.model_id for s in specs]) as db:
        click.echo(f"database {db.path}: {len(specs)} model(s) to check", err=True)
        if scheduler:
            from filterdb.dask_build import build_on_dask
            report = build_on_dask(db, specs, scheduler, force=force, verify=verify)
        else:
            report = run_build(db, specs, force=force, jobs=jobs, description=leaderboard or "checkpoints",
                               verify=verify)
        report_skipped_convs(db, report)
    report_build(report)


@click.command()
@click.argument("models", nargs=-1)
@db_option
@click.option("--arch", default=None, metavar="ARCH",
              help="Architecture of state-dict FILEs (.pt .pth .bin .ckpt .safetensors): a filterdb model string, "
                   "timm:NAME, torchvision:NAME, robustbench:DATASET/THREAT/NAME (random weights, nothing "
                   "downloaded) or MODULE:CALLABLE.")
@click.option("--arch-kwargs", default=None, metavar="JSON", help="Keyword arguments of the architecture, as JSON.")
@click.option("--set", "sets", multiple=True, metavar="COLUMN=VALUE",
              help="Set a model-table column of the added models (repeatable): training=robust, dataset=cifar10, "
                   "threat_model=Linf, eps=8/255, training_method=trades, paper=..., name=...")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A CSV of models, one a row: path (relative to the CSV), arch, arch_kwargs, input_shape and "
                   "any model-table column.")
@click.option("--trust-code", is_flag=True,
              help="Load TorchScript archives and pickled whole models, which runs code from the file.")
@click.option("--force", is_flag=True, help="Extract again even if already in the database.")
@click.option("--verify", "verify", is_flag=True, help=VERIFY_HELP)
@offline_option
@input_shape_option
def add(models, db_path, arch, arch_kwargs, sets, manifest, trust_code, force, verify, offline, input_shape):
    """Add models: filterdb training checkpoints (FILE.pt), your own state dicts (FILE --arch ARCH),
    safetensors, ONNX (.onnx) and, with --trust-code, TorchScript; pretrained names (timm:NAME,
    torchvision:NAME) or RobustBench ids (robustbench:cifar10/Linf/Standard: the published weights)."""
    import os

    if offline:  # read by filterdb.sources.pretrained and by the Hugging Face hub that timm downloads through
        os.environ.update(FILTERDB_OFFLINE="1", HF_HUB_OFFLINE="1")
    from filterdb.build import build as run_build
    from filterdb.cli.catalog import spec_for_argument
    from filterdb.outcomes import ModelOutcome
    from filterdb.own_models import LOAD_NOTES, manifest_specs, parse_sets, spec_for_file
    from filterdb.sources.base import with_input_shape
    from filterdb.sources.state_dict import parse_arch_kwargs
    from filterdb.store import FilterDB

    if not models and manifest is None:
        raise FilterDBError("give the models to add (FILE, timm:NAME, ...) or --manifest models.csv")
    columns = parse_sets(sets)
    kwargs = parse_arch_kwargs(arch_kwargs)
    failures: list[tuple[str, str]] = []
    specs = []
    for m in models:
        path = Path(m)
        if path.is_file():
            specs.extend(with_input_shape([spec_for_file(path, arch=arch, arch_kwargs=kwargs, columns=columns,
                                                         input_shape=input_shape, trust_code=trust_code)],
                                          input_shape))
        else:
            specs.extend(with_input_shape([spec_for_argument(m, offline=offline)], input_shape))
    if manifest is not None:
        found, failures = manifest_specs(manifest, trust_code=trust_code)
        specs.extend(found)
    db_dir = resolve_db(db_path)
    heal = [spec.model_id for spec in specs]  # a damaged shard of a model being added is extracted again
    db = FilterDB.open(db_dir, "a", heal=heal) if db_dir.exists() else None  # a damaged database is named first
    with removed_if_left_empty(db_dir):
        try:
            db = db or FilterDB.open(db_dir, "a", heal=heal)
            report = run_build(db, specs, force=force, description="add", verify=verify)
            report.outcomes.extend(ModelOutcome(label, "", "failed", error=f"{label}: {error}")
                                   for label, error in failures)
            report_skipped_convs(db, report)
            for outcome in report.outcomes:
                if outcome.status == "added" and outcome.key in LOAD_NOTES:
                    click.echo(f"{outcome.key}: {LOAD_NOTES[outcome.key]}", err=True)
        finally:
            if db is not None:
                db.close()
    report_build(report)


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@select_option
@click.option("--layer", default=None, metavar="SELECTOR",
              help="Only these layers of each model, as compare's --layer: first, last, all, an INDEX, a "
                   "conv_depth_norm range LO-HI, deciles [default: all].")
@click.option("--kernel", default="all", show_default=True, metavar="KxK|all",
              help="Only layers of this kernel size.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def export(out, db_path, select, layer, kernel, force):
    """Pack the database into one self-contained .h5 file that every read-only command opens with --db."""
    from filterdb.store import open_database

    if out.exists() and not out.is_dir() and not force:
        raise FilterDBError(f"{out} exists; pass --force to overwrite it, or choose another path")
    with open_database(resolve_db(db_path)) as db:
        models = selected_models(db.models, select)
        layers = db.layers[db.layers["model_id"].isin(models.index)]
        if kernel != "all":
            if kernel not in set(layers["kernel"]):
                raise FilterDBError(f"no {kernel} layers among the selected models of {db.path}; kernels there: "
                                    f"{', '.join(sorted(set(layers['kernel']))) or 'none'}")
            layers = layers[layers["kernel"] == kernel]
        if layer is not None:
            from filterdb.analysis.groups import select_layers
            layers = select_layers(layers, layer).drop(columns="layers")
            if layers.empty:
                raise FilterDBError(f"--layer {layer} selects no layers of the selected models; try --layer all")
        path = db.export(out, list(models.index), layers, force=force, selection=select or "",
                         layer_selector=layer or "")
    click.echo(f"{path}: {len(models)} models, {len(layers)} layers, {path.stat().st_size / 2**20:.1f} MiB; "
               f"read it with --db {path}", err=True)


@click.command()
@db_option
@select_option
@format_option
@click.option("--json", "as_json", is_flag=True, help="Shorthand for --format json (summary and models).")
@click.option("--all", "show_all", is_flag=True,
              help="Every model in the table (by default the first 20; --format csv/json always give all).")
def info(db_path, select, fmt, as_json, show_all):
    """Models, layers, filters per kernel size and size on disk of a database."""
    from filterdb.store import open_database
    from filterdb.summary import TABLE_ROWS, print_info

    with open_database(resolve_db(db_path)) as db:
        if as_json and fmt not in ("table", "json"):
            raise FilterDBError(f"--json and --format {fmt} ask for two formats; give one of them")
        chosen = selected_models(db.models, select) if select else None
        print_info(db, "json" if as_json else fmt, rows=None if show_all else TABLE_ROWS, models=chosen)


@click.command()
@click.option("--db", "db_path", type=click.Path(path_type=Path), default=None,
              help="Database directory [default: $FILTERDB_HOME/demo-db].")
@format_option
def demo(db_path, fmt):
    """Build the demo database (16 matched pairs trained on digits; cached) and compare robust vs normal.

    Prints, for the first 3x3 convolution, the unpaired (Mann-Whitney U), paired (Wilcoxon
    signed-rank over the matched pairs) and permutation statistics, the divergence with its
    permutation null, and the same for a normal-vs-normal baseline (the normal models in two halves
    by seed); then writes 'filterdb report robust normal' beside the database (demo-report.html).
    """
    from filterdb.build import build as run_build
    from filterdb.cli.catalog import leaderboard_specs
    from filterdb.store import FilterDB

    db_path = db_path or paths.demo_db_path()
    with FilterDB.open(db_path, "a") as db:
        report = run_build(db, leaderboard_specs("demo"), description="demo")
    if report.failed:
        report_build(report)
    from filterdb.cli.demo import print_demo_comparison
    from filterdb.cli.report import write_report
    print_demo_comparison(db_path, fmt)
    written = write_report(db_path, Path(db_path).parent / "demo-report.html", "robust", "normal")
    if fmt == "table":
        click.echo(f"Report (one HTML file to open or share): {written}")
    else:
        click.echo(f"report written to {written}", err=True)
    click.echo(demo_next_steps(db_path), err=True)


def demo_next_steps(db_path: Path) -> str:
    """Where the demo database is and what to try on it (the other commands do not open it by default)."""
    import shlex

    db = shlex.quote(str(db_path))
    return (f"\nThe demo database is {db_path}. Other commands open --db, else $FILTERDB_DB, else "
            f"$FILTERDB_HOME/db; next, try:\n"
            f"  filterdb info --db {db}\n"
            f"  filterdb compare robust normal --layer deciles --db {db}\n"
            f"  filterdb metrics --db {db}\n"
            f"  export FILTERDB_DB={db}   # then --db is not needed")
