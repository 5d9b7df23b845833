"""``filterdb report``: one self-contained HTML file to share (registered by filterdb.cli through ``COMMANDS``)."""
from __future__ import annotations

from pathlib import Path

import click

from filterdb.cli.options import check_output_file, db_option, resolve_db
from filterdb.errors import FilterDBError


def write_report(db_path: Path, output: Path, group_a: str | None = None, group_b: str | None = None,
                 layer: str = "first", kernel: str = "3x3", permutations: int = 9999, seed: int = 0,
                 progress: bool = False) -> Path:
    """Write the report of the database at ``db_path`` (and of ``group_a`` vs ``group_b`` when given) to ``output``."""
    from filterdb.analysis.compare import compare_groups
    from filterdb.analysis.report import report_html
    from filterdb.atomic import atomic_path
    from filterdb.store import open_database

    result = depth = None
    if group_a is not None and group_b is not None:
        result = compare_groups(db_path, group_a, group_b, layer, kernel=kernel, permutations=permutations,
                                seed=seed, progress=progress)
        depth = compare_groups(db_path, group_a, group_b, "deciles", kernel=kernel, permutations=permutations,
                               seed=seed, progress=progress)
    with open_database(db_path) as db:
        page = report_html(db, str(db_path), result, depth)
    with atomic_path(output) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return output


@click.command(short_help="Write one self-contained HTML report: the database's overview, and with two groups "
                          "their comparison, by depth, and their first-layer filters.")
@click.argument("group_a", required=False)
@click.argument("group_b", required=False)
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False), default=Path("report.html"),
              show_default=True, help="The HTML file to write.")
@click.option("--layer", default="first", show_default=True, help="The layer group of the comparison's tables "
              "(as in compare); the depth figures use deciles.")
@click.option("--kernel", default="3x3", show_default=True, metavar="KxK|all", help="Only layers of this kernel size.")
@click.option("--permutations", default=9999, show_default=True, metavar="N", help="Bound on each permutation null.")
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap intervals and permutations.")
@db_option
def report(group_a, group_b, output, layer, kernel, permutations, seed, db_path):
    """Write one self-contained HTML report (CSS inline, figures embedded, no network; prints on paper).

    Without groups: the database's overview (models by source, training, dataset and
    architecture; the models; the matched pairs). With GROUP_A GROUP_B (the group grammar of
    'filterdb compare', e.g. 'filterdb report robust normal -o report.html'): also their
    comparison's tables, metrics and divergence by depth with their nulls, and the first
    layer's filters of one model of each group.
    """
    if (group_a is None) != (group_b is None):
        raise FilterDBError("give two groups (e.g. robust normal) or none; one group has nothing to compare with")
    check_output_file(output, ("html", "htm"), "--output")
    written = write_report(resolve_db(db_path), output, group_a, group_b, layer, kernel, permutations, seed,
                           progress=True)
    click.echo(f"report written to {written}", err=True)
