"""``filterdb verify``: check a database against its checksums, and repair it (``filterdb.cli.database_check``)."""
from __future__ import annotations

import click

from filterdb.cli.database_check import repair_database, verify_database
from filterdb.cli.options import db_option, resolve_db


@click.command()
@db_option
@click.option("--repair", is_flag=True, help="Move damaged or stray files aside, rebuild the master and the cache, "
                                             "list the models to extract again.")
def verify(db_path, repair):
    """Check every shard, the master and the metrics cache against their checksums; exit 0 only when whole."""
    db = resolve_db(db_path)
    if db.is_file():
        verify_export(db, repair)
        return
    result = verify_database(db)
    for problem in result.problems:
        click.secho(f"problem: {problem.path}: {problem.what}", fg="red", err=True)
    click.echo(f"{db}: {len(result.good_shards)} intact shard(s), {len(result.problems)} problem(s), "
               f"{result.n_cache_files} cache file(s) checked", err=True)
    if not repair:
        if result.problems:
            click.echo("run 'filterdb verify --repair' to move the damaged files aside and rebuild", err=True)
            raise SystemExit(1)
        return
    if not result.problems:
        return
    lost = repair_database(result, echo=lambda line: click.echo(line, err=True))
    after = verify_database(db)
    for problem in after.problems:
        click.secho(f"still: {problem.path}: {problem.what}", fg="red", err=True)
    if lost:
        click.echo(f"{len(lost)} model(s) to extract again ('filterdb build' / 'filterdb add' with the same "
                   "source re-extracts them):", err=True)
        for line in lost:
            click.echo(f"  {line}", err=True)
    if lost or after.problems:
        raise SystemExit(1)



def verify_export(path, repair: bool) -> None:
    """An exported file: its tables (on open) and every layer's filters against their digests."""
    from filterdb.errors import FilterDBError
    from filterdb.packed import PackedDB

    if repair:
        raise FilterDBError(f"{path} is an export: it cannot be repaired in place; export it again from its "
                            "database directory")
    with PackedDB(path) as packed:
        for _ in packed.iter_layers():
            pass
        click.echo(f"{path}: export whole, {len(packed.models)} model(s), {len(packed.layers)} layer(s) checked",
                   err=True)
