"""`filterdb info` on a database of more models than a terminal shows: counts, the first rows, --all, CSV, JSON."""
import io
import json
import re

import pandas as pd
import pytest
from click.testing import CliRunner
from torch import nn

from filterdb import open_database
from filterdb.build import add_module
from filterdb.cli import main
from filterdb.output import RICH_ROWS, emit
from filterdb.store import FilterDB
from filterdb.summary import TABLE_ROWS, counts_table

N_MODELS = TABLE_ROWS + 5


@pytest.fixture(scope="module")
def many_models(tmp_path_factory):
    """25 one-convolution models: 9 robust, 16 normal; 3 architectures (12, 8 and 5 models)."""
    path = tmp_path_factory.mktemp("info") / "db"
    net = nn.Sequential(nn.Conv2d(1, 2, 3))
    with FilterDB.open(path, "a") as db, db.batch(max_delay=3600):
        for i in range(N_MODELS):
            arch = "net-a" if i < 12 else "net-b" if i < 20 else "net-c"
            add_module(db, net, source="test", name=f"m{i:02d}", input_shape=(1, 5, 5),
                          record={"training": "robust" if i % 3 == 0 else "normal", "architecture": arch,
                                  "dataset": "digits"})
    return path


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_table_shows_counts_and_the_first_rows(many_models):
    out = run("info", "--db", many_models)
    with open_database(many_models) as db:
        names = list(db.models["name"])
    shown = [n for n in names if f" {n} " in out]
    assert shown == names[:TABLE_ROWS]
    assert f"{N_MODELS} models in {many_models} (the first {TABLE_ROWS})" in out
    assert f"... and {N_MODELS - TABLE_ROWS} more models; use --all for every row" in out
    cells = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]  # columns are 2+ spaces apart
    counts = {(c[0], c[1]): int(c[2]) for c in cells if len(c) == 3 and c[2].isdigit()}
    assert counts == {("source", "test"): 25, ("training", "normal"): 16, ("training", "robust"): 9,
                      ("dataset", "digits"): 25, ("architecture", "net-a"): 12, ("architecture", "net-b"): 8,
                      ("architecture", "net-c"): 5}
    assert f"{N_MODELS} models, {N_MODELS} layers, {2 * N_MODELS} filters" in out


def test_all_shows_every_row(many_models):
    out = run("info", "--db", many_models, "--all")
    with open_database(many_models) as db:
        names = list(db.models["name"])
    assert [n for n in names if f" {n} " in out] == names
    assert "more models" not in out and "(the first" not in out


def test_csv_and_json_give_every_model(many_models):
    csv = pd.read_csv(io.StringIO(run("info", "--db", many_models, "--format", "csv")))
    summary = json.loads(run("info", "--db", many_models, "--json"))
    with open_database(many_models) as db:
        assert list(csv["model_id"]) == list(db.models.index) == [r["model_id"] for r in summary["model_table"]]
    assert summary["models_by"]["training"] == {"normal": 16, "robust": 9}
    assert summary["models_by"]["architecture"] == {"net-a": 12, "net-b": 8, "net-c": 5}


def test_counts_beyond_the_top_values_are_summed():
    table = counts_table({"architecture": {"a": 5, "b": 3, "c": 2, "d": 1}}, top=2)
    assert table.to_dict(orient="records") == [
        {"column": "architecture", "value": "a", "models": 5}, {"column": "architecture", "value": "b", "models": 3},
        {"column": "architecture", "value": "(2 more values)", "models": 3}]


def test_long_tables_are_plain_aligned_text():
    n = RICH_ROWS + 1
    frame = pd.DataFrame({"name": [f"model-{'x' * (i % 7)}{i}" for i in range(n)], "value": [i * 1.5 for i in range(n)]})
    out = io.StringIO()
    emit(frame, "table", title="long", file=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "long" and lines[1].split() == ["name", "value"] and set(lines[2]) == {"-", " "}
    rows = lines[3:]
    assert len(rows) == n
    assert [r.split()[0] for r in rows] == list(frame["name"])  # every cell whole
    assert [float(r.split()[1]) for r in rows] == list(frame["value"])
    assert len({len(r) for r in rows}) == 1  # numbers right-aligned to one column edge
