"""Commands about where models come from: ``filterdb leaderboards`` and ``filterdb pairs``."""
from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from filterdb.cli.options import db_option, format_option, resolve_db, select_option, selected_models
from filterdb.output import emit, first_few

LEADERBOARD_SORTS = ("board", "robust_acc", "clean_acc", "name")


@click.command()
@click.argument("name", required=False)
@click.option("--db", "db_path", type=click.Path(path_type=Path), default=None,
              help="With NAME: mark the models already in this database (column in_db) [default: $FILTERDB_DB, "
                   "else $FILTERDB_HOME/db, where it exists].")
@click.option("--sort", "sort_by", type=click.Choice(LEADERBOARD_SORTS), default="board", show_default=True,
              help="With NAME: order of the models (accuracies highest first; board: the leaderboard's own order).")
@format_option
def leaderboards(name, db_path, sort_by, fmt):
    """List the leaderboards that 'filterdb build --leaderboard' accepts, with model counts; or the models of NAME."""
    from filterdb.cli.catalog import leaderboards as all_boards
    from filterdb.errors import FilterDBError

    boards = all_boards()
    if name is None:
        rows = []
        for board in boards.values():
            specs = board.specs()
            normal = sum(s.record.get("training") == "normal" for s in specs)
            rows.append({"leaderboard": board.name, "models": len(specs), "robust": len(specs) - normal,
                         "normal": normal, "description": board.description})
        emit(pd.DataFrame(rows), fmt, title="leaderboards")
        return
    if name not in boards:
        raise FilterDBError(f"unknown leaderboard {name!r}; valid: {', '.join(sorted(boards))}")
    columns = ["architecture", "training", "clean_acc", "robust_acc", "extra_data"]
    specs = boards[name].specs()
    rows = [{"model": s.name.rsplit("/", 1)[-1], **{c: s.record.get(c, "") for c in columns}} for s in specs]
    frame = pd.DataFrame(rows, columns=["model", *columns])
    title = f"{name}: {len(rows)} models"
    db_dir = resolve_db(db_path)
    if db_path is not None or db_dir.exists():
        from filterdb.store import open_database
        with open_database(db_dir) as db:
            present = set(db.models.index)
        frame.insert(1, "in_db", [s.model_id in present for s in specs])
        title += f", {int(frame['in_db'].sum())} of them in {db_dir}"
    if sort_by == "name":
        frame = frame.sort_values("model", key=lambda v: v.str.lower(), kind="stable")
    elif sort_by != "board":
        frame[sort_by] = pd.to_numeric(frame[sort_by], errors="coerce")
        frame = frame.sort_values(sort_by, ascending=False, na_position="last", kind="stable")
    emit(frame.reset_index(drop=True), fmt, title=title)


def counterpart_candidates(dataset: str, architecture: str) -> list[str]:
    """Normal models built by the same constructor: RobustBench's Standard entries, pretrained ImageNet models."""
    from filterdb.sources.pretrained import COUNTERPARTS
    from filterdb.sources.robustbench import model_table

    table = model_table()
    standard = table[(table["dataset"] == dataset) & (table["architecture"] == architecture)
                     & (table["training"] == "normal")]
    candidates = [f"robustbench:{r.dataset}/{r.threat_model}/{r.name}" for r in standard.itertuples()]
    if dataset == "imagenet" and architecture in COUNTERPARTS:
        candidates.append(COUNTERPARTS[architecture])
    return candidates


PAIR_TABLE_COLUMNS = ["robust_model", "dataset", "architecture", "normal_models", "missing", "twin", "pair"]


def pair_table(models: pd.DataFrame) -> pd.DataFrame:
    """One row per robust model: the normal models of the same dataset and architecture, those
    still missing, and its twin (the normal model trained with it as a matched pair) if any."""
    from filterdb.model_pairs import ranked_pairs, twin_pairs

    keys = models["key"]
    ranked = ranked_pairs(models)
    same = ranked[ranked["same_dataset"] & ranked["same_architecture"]]
    twins = twin_pairs(models).set_index("robust_id")
    present_keys = set(keys)
    rows = []
    for _, robust in models[models["training"] == "robust"].sort_values("key").iterrows():
        known = robust["architecture"] != ""  # an unknown architecture pairs with nothing
        normal_models = keys.loc[same.loc[same["robust_id"] == robust["model_id"], "normal_id"]]
        missing = [c for c in counterpart_candidates(robust["dataset"], robust["architecture"])
                   if c not in present_keys] if known else []
        twin = twins.loc[robust["model_id"]] if robust["model_id"] in twins.index else None
        rows.append({"robust_model": robust["key"], "dataset": robust["dataset"],
                     "architecture": robust["architecture"], "normal_models": ", ".join(sorted(normal_models)),
                     "missing": ", ".join(dict.fromkeys(missing)),
                     "twin": "" if twin is None else twin["normal"], "pair": "" if twin is None else twin["pair"]})
    return pd.DataFrame(rows, columns=PAIR_TABLE_COLUMNS)


@click.command()
@db_option
@select_option
@format_option
def pairs(db_path, select, fmt):
    """For each robust model, the normal models of the same architecture, the counterparts still
    missing, and its twin: the normal model trained with it as a matched pair (same seed,
    initial weights and data order; the paired statistics compare twins).

    On the terminal, normal_models is their count and missing the first of them; --format csv or
    json lists every one.

    A missing robustbench counterpart is added with 'filterdb build --leaderboard ... --models NAME',
    a pretrained one with 'filterdb add timm:NAME' or 'filterdb add torchvision:NAME'.
    """
    from filterdb.store import open_database

    with open_database(resolve_db(db_path)) as db:
        table = pair_table(db.models)
        if select:  # the robust models of the selection; their counterparts come from the whole database
            table = table[table["robust_model"].isin(set(selected_models(db.models, select)["key"]))]
    twins = int((table["twin"] != "").sum())
    shown = table
    if fmt == "table":  # one line per robust model: its twin, how many normal counterparts, the first missing
        shown = table.assign(normal_models=[len(v.split(", ")) if v else 0 for v in table["normal_models"]],
                             missing=[first_few(v.split(", "), 1) if v else "" for v in table["missing"]])
        shown = shown[["robust_model", "twin", "normal_models", "architecture", "dataset", "missing", "pair"]]
    emit(shown, fmt, priority=["robust_model", "twin", "normal_models", "architecture"], title=f"{len(table)} robust models and their normal counterparts ({twins} with a twin)")
    unpaired = int((table["normal_models"] == "").sum())
    if unpaired:
        click.echo(f"{unpaired} robust model(s) have no normal counterpart in the database", err=True)


