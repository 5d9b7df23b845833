"""The options several commands share, declared once: ``@db_option`` and friends."""
from __future__ import annotations

from pathlib import Path

import click

from filterdb import paths
from filterdb.errors import FilterDBError
from filterdb.output import FORMATS
from filterdb.sources.base import parse_input_shape

DB_HELP = "Database directory [default: $FILTERDB_DB, else $FILTERDB_HOME/db]."

db_option = click.option("--db", "db_path", type=click.Path(path_type=Path), default=None, help=DB_HELP)
_format = click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                       help="Output: a table on the terminal, or CSV / JSON on standard output.")


def _set_wide(ctx, param, value: bool) -> bool:
    from filterdb.output import set_wide
    set_wide(value)
    return value


_wide = click.option("--wide", is_flag=True, expose_value=False, callback=_set_wide,
                     help="Tables show every column, whatever the terminal's width [default: the columns that fit "
                          "$COLUMNS, the terminal, else 100 characters].")


def format_option(command):
    """``--format`` and ``--wide``: every command that prints a table takes both."""
    return _format(_wide(command))
jobs_option = click.option("--jobs", "-j", default=1, show_default=True, help="Worker processes.")
scheduler_option = click.option("--scheduler", default=None, metavar="ADDRESS",
                                help="Dask scheduler address: run the work on that cluster.")
offline_option = click.option("--offline", is_flag=True,
                              help="Never touch the network; a missing weights file is an error.")


def resolve_db(db_path: Path | None) -> Path:
    """``--db`` if given, else ``$FILTERDB_DB``, else ``$FILTERDB_HOME/db``."""
    return db_path if db_path is not None else paths.default_db_path()


def parse_input_shape_option(ctx, param, value) -> tuple[int, int, int] | None:
    try:
        return parse_input_shape(value, "--input-shape")
    except FilterDBError as exc:
        raise click.UsageError(str(exc), ctx) from None


input_shape_option = click.option(
    "--input-shape", callback=parse_input_shape_option, default=None, metavar="C,H,W",
    help="Input shape of the forward pass that orders the layers [default: the model's own: its dataset's, "
         "or timm/torchvision's pretrained configuration].")


# What matplotlib's Agg canvas writes (FigureCanvasBase.get_supported_filetypes), without importing it.
PLOT_FORMATS = ("eps", "jpeg", "jpg", "pdf", "pgf", "png", "ps", "raw", "rgba", "svg", "svgz", "tif", "tiff", "webp")


def check_plot_path(ctx, param, value: Path | None) -> Path | None:
    """A ``--plot`` file is checked when the command line is read, before any work: its folder
    must exist and be writable, its suffix a format matplotlib writes."""
    from filterdb.errors import FilterDBError

    if value is None:
        return None
    suffix = value.suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise FilterDBError(f"--plot {value}: {'no file extension' if not suffix else f'.{suffix} is not an image format'}"
                            f"; end the name with one of {', '.join('.' + f for f in PLOT_FORMATS)}")
    folder = value.parent if str(value.parent) else Path(".")
    if not folder.is_dir():
        raise FilterDBError(f"--plot {value}: the folder {folder} does not exist; create it or choose another path")
    import os
    if not os.access(folder, os.W_OK):
        raise FilterDBError(f"--plot {value}: the folder {folder} is not writable; choose another path")
    return value


plot_option = click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None,
                           callback=check_plot_path,
                           help="Also save a figure (mean ± std per group and layer group) to this file (.png, .pdf, .svg, ...).")


SELECT_HELP = ("Only the models this expression selects (the group grammar of 'compare': robust, normal, "
               "COLUMN=VALUE[|VALUE], name globs such as '*resnet*', joined with commas) [default: all].")
select_option = click.option("--select", "select", default=None, metavar="EXPR", help=SELECT_HELP)


def selected_models(models, select: str | None):
    """The rows of the model table that ``--select`` keeps (all of them without it)."""
    if not select:
        return models
    from filterdb.analysis.groups import select_models
    return select_models(models, select)


def check_output_file(path: Path | None, suffixes: tuple[str, ...], option: str) -> None:
    """Before any work: ``path`` ends in one of ``suffixes`` and its folder exists (one-line errors)."""
    if path is None:
        return
    if path.suffix.lower().lstrip(".") not in suffixes:
        raise FilterDBError(f"{option} {path}: give a file ending in {', '.join('.' + s for s in suffixes)}")
    if path.is_dir():
        raise FilterDBError(f"{option} {path} is a directory; give the path of the file to write")
    if not path.parent.is_dir():
        raise FilterDBError(f"{option} {path}: the folder {path.parent} does not exist; create it or choose "
                            "another path")
