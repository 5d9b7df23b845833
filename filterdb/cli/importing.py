"""``filterdb import``: databases published by others become filterdb databases."""
from __future__ import annotations

from pathlib import Path

import click

from filterdb.cli.options import db_option, resolve_db


@click.group("import")
def import_group():
    """Import a published filter database into a filterdb database."""


@import_group.command("cnn-filter-db")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@db_option
@click.option("--force", is_flag=True, help="Import models again even if already in the database.")
@click.option("--chunk-rows", default=1 << 20, show_default=True, help="Filters read and written at a time.")
def cnn_filter_db(file, db_path, force, chunk_rows):
    """Import the CNN-Filter-DB / robustness-through-filters HDF5 file (/filters and /meta).

    One model per published model (source cnn-filter-db), one layer per /meta row, filters as
    float32. Models already in the database are skipped, so a rerun resumes an interrupted import.
    """
    from filterdb.cli.database import report_build
    from filterdb.sources.cnn_filter_db import import_cnn_filter_db, plan_import
    from filterdb.store import FilterDB

    models = plan_import(file)  # a file that cannot be read is refused before the database is touched
    with FilterDB.open(resolve_db(db_path), "a") as db:
        click.echo(f"database {db.path}: importing {len(models)} model(s) from {file}", err=True)
        report = import_cnn_filter_db(file, db, force=force, chunk_rows=chunk_rows, models=models)
    report_build(report)

