"""The ``filterdb`` command line. Each command is a thin layer over the Python API.

Importing this module costs click and nothing else: every command imports what it needs
when it runs, and the commands of other modules load on first use (``--help`` lists them
from ``CONTRIBUTED_COMMANDS``), so ``filterdb --help`` and the read-only commands never
import torch.
"""
from __future__ import annotations

import importlib
import json
from collections import Counter
import sys
from pathlib import Path

import click

from filterdb import paths
from filterdb.errors import FilterDBError
from filterdb.output import FORMATS, emit

# Commands of other modules: name -> (module, attribute, the command's one-line help).
# tests/test_imports.py checks that each help line is the command's own.
CONTRIBUTED_COMMANDS = {
    "compare": ("filterdb.analysis.cli", "compare",
                "Compare two groups of models: per-layer metrics, paired, unpaired and permutation statistics, "
                "filter divergence."),
    "evaluate": ("filterdb.training.evaluate_cli", "evaluate",
                 "Evaluate training checkpoints: clean and robust accuracy (PGD, CW, AutoAttack at Linf and L2 budgets), "
                 "where the perturbations sit (border vs interior) and the fooling rate under rotations and translations."),
    "import": ("filterdb.sources.import_cli", "import_group",
               "Import a published filter database into a filterdb database."),
    "leaderboards": ("filterdb.sources.cli", "leaderboards",
                     "List the leaderboards that 'filterdb build --leaderboard' accepts, with model counts; or the "
                     "models of NAME."),
    "metrics": ("filterdb.analysis.cli", "metrics", "Per-layer metrics of the filters in the database."),
    "models": ("filterdb.training.cli", "models_command",
               "The model-string grammar; with MODEL_STRING, check it and show what it builds (on the meta device)."),
    "pairs": ("filterdb.sources.cli", "pairs",
              "For each robust model, the normal models of the same architecture, the counterparts still missing, "
              "and its twin: the normal model trained with it as a matched pair (same seed, initial weights and data "
              "order; the paired statistics compare twins)."),
    "train": ("filterdb.training.cli", "train",
              "Train models: one run, a matched normal/robust pair, or a RobustBench counterpart."),
    "verify": ("filterdb.verify", "verify",
               "Check every shard, the master and the metrics cache against their checksums; exit 0 only when whole."),
}


class LazyCommands(dict):
    """The group's name -> command mapping; a contributed command is imported on first lookup."""

    def __init__(self, lazy: dict[str, tuple[str, str, str]]):
        super().__init__()
        self.lazy = dict(lazy)

    def _load(self, name: str) -> None:
        if dict.__contains__(self, name) or name not in self.lazy:
            return
        module_name, attribute, _ = self.lazy[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            del self.lazy[name]  # an optional part that is not installed
            return
        dict.__setitem__(self, name, getattr(module, attribute))

    def loaded(self, name: str) -> bool:
        return dict.__contains__(self, name)

    def __getitem__(self, name):
        self._load(name)
        return dict.__getitem__(self, name)

    def get(self, name, default=None):
        self._load(name)
        return dict.get(self, name, default)

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or name in self.lazy

    def __iter__(self):
        return iter(sorted({*dict.keys(self), *self.lazy}))

    def __len__(self) -> int:
        return len({*dict.keys(self), *self.lazy})

    def keys(self):
        return list(self)

    def values(self):
        return [self[name] for name in self]

    def items(self):
        return [(name, self[name]) for name in self]


class FilterDBGroup(click.Group):
    """Turns FilterDBError into a one-line message and exit code 1, Ctrl-C into one line and
    exit code 130 (no traceback); lists contributed commands without importing them."""

    def format_commands(self, ctx, formatter):
        helps = {}  # name -> the command's one-line help (a function of the width)
        for name in self.list_commands(ctx):
            if self.commands.loaded(name):
                if not self.commands[name].hidden:
                    helps[name] = self.commands[name].get_short_help_str
            else:
                helps[name] = lambda limit, text=self.commands.lazy[name][2]: click.utils.make_default_short_help(text, limit)
        if not helps:
            return
        limit = formatter.width - 6 - max(len(name) for name in helps)
        rows = [(name, short_help(limit)) for name, short_help in helps.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FilterDBError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


db_option = click.option("--db", "db_path", type=click.Path(path_type=Path), default=None,
                         help="Database directory [default: $FILTERDB_DB or $FILTERDB_HOME/db].")


def parse_input_shape(ctx, param, value) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise click.BadParameter(f"{value!r}: give channels, height and width as C,H,W, e.g. 3,256,256")
    return shape


input_shape_option = click.option(
    "--input-shape", callback=parse_input_shape, default=None, metavar="C,H,W",
    help="Input shape of the forward pass that orders the layers [default: the model's own: its dataset's, "
         "or timm/torchvision's pretrained configuration].")


def resolve_db(db_path: Path | None) -> Path:
    return db_path if db_path is not None else paths.default_db_path()


@click.group(cls=FilterDBGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="filterdb")
def main():
    """filterdb: convolution filters of robust and normal CNNs, in one HDF5 database."""


main.commands = LazyCommands(CONTRIBUTED_COMMANDS)


def report_build(report, fmt: str = "table") -> None:
    """Print the build's summary table and exit non-zero if any model failed."""
    frame = report.to_frame()
    changed = frame[frame["status"] != "skipped"]
    if len(changed) > 1 or report.count("added"):
        emit(changed.drop(columns="error") if not report.failed else changed, fmt, title="build summary")
    for outcome in report.failed:
        click.secho(f"error: {outcome.error}", fg="red", err=True)
    click.echo(f"{report.count('added')} added, {report.count('skipped')} already present, "
               f"{report.count('failed')} failed", err=True)
    if report.failed:
        sys.exit(1)


def report_skipped_convs(db, report) -> None:
    """One line per added model with modules that convolve but whose filters were not stored."""
    added = {o.model_id for o in report.outcomes if o.status == "added"}
    models = db.models
    for model_id, row in models[models.index.isin(added) & (models["skipped_convs"] != "")].iterrows():
        skipped = json.loads(row["skipped_convs"])
        kinds = Counter(s["class"] for s in skipped)
        what = ", ".join(f"{n} {cls}" for cls, n in kinds.most_common())
        click.echo(f"note: {row['key']}: {len(skipped)} convolution module(s) not stored ({what}: "
                   f"{skipped[0]['reason']}); the model table's skipped_convs lists them", err=True)


@main.command()
@click.option("--leaderboard", "-l", default=None, help="Leaderboard to build ('filterdb leaderboards' lists them).")
@click.option("--checkpoints", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Ingest every filterdb training checkpoint (*.pt) under this directory.")
@click.option("--models", "-m", multiple=True, help="Only models whose name matches this glob (repeatable).")
@db_option
@click.option("--force", is_flag=True, help="Extract models again even if already in the database.")
@click.option("--jobs", "-j", default=1, show_default=True, help="Worker processes.")
@click.option("--scheduler", default=None, help="Dask scheduler address: run the build on that cluster.")
@click.option("--offline", is_flag=True, help="Never touch the network; a missing weights file is an error.")
@click.option("--model-dir", type=click.Path(path_type=Path), default=None,
              help="robustbench weights cache [default: $FILTERDB_MODEL_DIR or $FILTERDB_HOME/models].")
@click.option("--keep-weights/--no-keep-weights", default=True, show_default=True,
              help="Keep each downloaded weights file once its filters are stored.")
@input_shape_option
def build(leaderboard, checkpoints, models, db_path, force, jobs, scheduler, offline, model_dir, keep_weights,
          input_shape):
    """Build (or complete) a filter database from a leaderboard or a checkpoint directory.

    Models already in the database are skipped, so a rerun resumes an interrupted build.
    """
    from filterdb.build import build as run_build
    from filterdb.sources import leaderboard_specs, select_specs
    from filterdb.sources.base import with_input_shape
    from filterdb.store import FilterDB

    if (leaderboard is None) == (checkpoints is None):
        raise FilterDBError("give exactly one of --leaderboard NAME or --checkpoints DIR")
    if leaderboard is not None:
        specs = leaderboard_specs(leaderboard, models, offline=offline, keep_weights=keep_weights,
                                  model_dir=model_dir or paths.robustbench_model_dir())
    else:
        from filterdb.sources.checkpoint import checkpoint_dir_specs
        specs = select_specs(checkpoint_dir_specs(checkpoints), models, where=str(checkpoints))
    specs = with_input_shape(specs, input_shape)
    with FilterDB.open(resolve_db(db_path), "a") as db:
        click.echo(f"database {db.path}: {len(specs)} model(s) to check", err=True)
        if scheduler:
            from filterdb.distributed import build_on_dask
            report = build_on_dask(db, specs, scheduler, force=force)
        else:
            report = run_build(db, specs, force=force, jobs=jobs, description=leaderboard or "checkpoints")
        report_skipped_convs(db, report)
    report_build(report)


@main.command()
@click.argument("models", nargs=-1, required=True)
@db_option
@click.option("--force", is_flag=True, help="Extract again even if already in the database.")
@input_shape_option
def add(models, db_path, force, input_shape):
    """Add models: filterdb training checkpoints (FILE.pt) or pretrained names (timm:NAME, torchvision:NAME)."""
    from filterdb.build import build as run_build
    from filterdb.sources.base import with_input_shape
    from filterdb.sources.named import spec_for_argument
    from filterdb.store import FilterDB

    db_dir = resolve_db(db_path)
    db = FilterDB.open(db_dir, "a") if db_dir.exists() else None  # a damaged database is named first
    try:
        specs = with_input_shape([spec_for_argument(m) for m in models], input_shape)
        db = db or FilterDB.open(db_dir, "a")
        report = run_build(db, specs, force=force, description="add")
        report_skipped_convs(db, report)
    finally:
        if db is not None:
            db.close()
    report_build(report)


@main.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@db_option
def export(out, db_path):
    """Pack the database into one self-contained .h5 file (same layout as filterdb.h5, filters copied in)."""
    from filterdb.store import open_database

    with open_database(resolve_db(db_path)) as db:
        path = db.export(out)
        n_models = len(db.models)
    click.echo(f"{path}: {n_models} models, {path.stat().st_size / 2**20:.1f} MiB", err=True)


@main.command()
@db_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Shorthand for --format json (summary and models).")
@click.option("--all", "show_all", is_flag=True,
              help="Every model in the table (by default the first 20; --format csv/json always give all).")
def info(db_path, fmt, as_json, show_all):
    """Models, layers, filters per kernel size and size on disk of a database."""
    from filterdb.store import open_database
    from filterdb.summary import TABLE_ROWS, print_info

    with open_database(resolve_db(db_path)) as db:
        if as_json and fmt not in ("table", "json"):
            raise FilterDBError(f"--json and --format {fmt} ask for two formats; give one of them")
        print_info(db, "json" if as_json else fmt, rows=None if show_all else TABLE_ROWS)


@main.command()
@click.option("--db", "db_path", type=click.Path(path_type=Path), default=None,
              help="Database directory [default: $FILTERDB_HOME/demo-db].")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def demo(db_path, fmt):
    """Build the demo database (16 matched pairs trained on digits; cached) and compare robust vs normal.

    Prints, for the first 3x3 convolution, the unpaired (Mann-Whitney U), paired (Wilcoxon
    signed-rank over the matched pairs) and permutation statistics, the divergence with its
    permutation null, and the same for a normal-vs-normal baseline (the normal models in two halves).
    """
    from filterdb.build import build as run_build
    from filterdb.sources import leaderboard_specs
    from filterdb.store import FilterDB

    db_path = db_path or paths.demo_db_path()
    with FilterDB.open(db_path, "a") as db:
        report = run_build(db, leaderboard_specs("demo"), description="demo")
    if report.failed:
        report_build(report)
    from filterdb.analysis.compare import print_demo_comparison
    print_demo_comparison(db_path, fmt)
