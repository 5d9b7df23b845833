"""Tables fit the terminal: the real CLI on the demo database at 80, 100 and 120 columns (and 200),
no line longer than the width, every model name and number of a row whole on one line."""
import io
import json
import re

import pytest
from click.testing import CliRunner

from filterdb.cli import main
from filterdb.output import emit, first_few, table_width

WIDTHS = (80, 100, 120)


def run(width: int, *args):
    result = CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    return result.stdout


def fits(out: str, width: int) -> list[str]:
    lines = out.splitlines()
    too_long = [line for line in lines if len(line) > width]
    assert not too_long, f"{len(too_long)} line(s) longer than {width}: {too_long[:2]}"
    return lines


def on_one_line(lines: list[str], *cells: str) -> None:
    """Each cell appears whole, as a token of some line (not cut, not folded)."""
    for cell in cells:
        assert any(re.search(rf"(^|\s){re.escape(cell)}(\s|$)", line) for line in lines), cell


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_fits_and_keeps_numbers_whole(demo_db, width):
    lines = fits(run(width, "compare", "robust", "normal", "--layer", "first", "--permutations", 99, "--db", demo_db),
                 width)
    records = json.loads(run(width, "compare", "robust", "normal", "--permutations", 99, "--db", demo_db,
                             "--format", "json"))
    from filterdb.analysis.rendering import number
    tests = [r for r in records if r["metric"] != "divergence"]
    assert len(tests) == 7
    for r in tests:  # each statistics row: metric, both means, the difference and its p on one line
        row = [line for line in lines if line.startswith(r["metric"] + " ")]
        assert row, r["metric"]
        for value in (r["mean_a"], r["mean_b"], r["difference"], r["p_value"], r["paired_p_value"]):
            assert re.search(rf"(^|\s){re.escape(number(value))}(\s|$)", row[0]), (r["metric"], value, row[0])
    div = next(r for r in records if r["metric"] == "divergence")
    on_one_line(lines, number(div["divergence"]), number(div["perm_null_median"]))
    assert any("p Wilcoxon" in line and "p MWU" in line for line in lines)  # the paired test beside the unpaired
    names = [line for line in lines if line.startswith("first ") or "digits/" in line]
    on_one_line(lines, *[n for n in ("digits/cnn4-16-s0/pgd", "digits/cnn4-16-s0/normal") if any(n in x for x in names)])


@pytest.mark.parametrize("width", (*WIDTHS, 200))
def test_info_fits_and_never_breaks_an_id_or_a_name(demo_db, width):
    lines = fits(run(width, "info", "--db", demo_db, "--all"), width)
    from filterdb.store import open_database
    with open_database(demo_db) as db:
        models = db.models
    on_one_line(lines, *models.index, *models["name"])
    hidden = [line for line in lines if "hidden: --wide shows them" in line]
    assert bool(hidden) == (width < 140)
    wide = run(width, "info", "--db", demo_db, "--all", "--wide")
    assert "hidden" not in wide and all(str(n) in wide for n in models["n_filters"])


@pytest.mark.parametrize("width", WIDTHS)
def test_pairs_one_line_per_robust_model(demo_db, width):
    lines = fits(run(width, "pairs", "--db", demo_db), width)
    from filterdb.store import open_database
    with open_database(demo_db) as db:
        models = db.models
    robust = sorted(models.loc[models["training"] == "robust", "key"])
    normal = sorted(models.loc[models["training"] == "normal", "key"])
    rows = [line for line in lines if line.split()[:1] and line.split()[0] in robust]
    assert [r.split()[0] for r in rows] == robust  # one row each
    for row in rows:  # its twin and the count of its normal counterparts (8 per architecture), not all of them
        twin = row.split()[0].replace("/pgd", "/normal")
        assert twin in row.split() and row.split()[2] == "8"
        assert sum(n in row for n in normal) == 1
    full = json.loads(run(width, "pairs", "--db", demo_db, "--format", "json"))
    assert all(len(r["normal_models"].split(", ")) == 8 for r in full)  # csv / json complete


@pytest.mark.parametrize("width", WIDTHS)
def test_show_metrics_and_leaderboards_fit(demo_db, width):
    from filterdb.store import open_database
    with open_database(demo_db) as db:
        name = db.models["name"].iloc[0]
    metrics = json.loads(run(width, "metrics", "--db", demo_db, "--models", name, "--format", "json"))
    lines = fits(run(width, "show", name, "--db", demo_db), width)
    for m in metrics:
        assert any(m["name"] in line and f"{m['ve_linf']:.4g}" in line for line in lines), m
    lines = fits(run(width, "metrics", "--db", demo_db, "--models", name), width)
    for m in metrics:  # each layer row: the model's name, the layer and its ve_linf on one line
        assert any(name in line and m["name"] in line and f"{m['ve_linf']:.4g}" in line for line in lines), m
    lines = fits(run(width, "leaderboards"), width)
    on_one_line(lines, "demo", "linf-cifar10")


def test_piped_width_is_columns_else_100(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert table_width(io.StringIO()) == 100
    monkeypatch.setenv("COLUMNS", "73")
    assert table_width(io.StringIO()) == 73


def test_low_priority_columns_go_first_and_a_footer_says_so():
    import pandas as pd
    frame = pd.DataFrame({"id": ["a" * 20], "keep": ["b" * 20], "drop": ["c" * 20], "also": ["d" * 20]})
    out = io.StringIO()
    emit(frame, "table", file=out, priority=["also", "keep"], width=70)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["id", "keep", "also"]
    assert lines[-1] == "1 column hidden: --wide shows them (drop)"


def test_first_few_bounds_a_list():
    assert first_few(range(256)) == "0, 1, 2 and 253 more"
    assert first_few(["a", "b", "c", "d"]) == "a, b, c, d"
    assert first_few(["x"] * 5, 1, "; ") == "x and 4 more"


def test_the_demo_tells_its_finding_on_one_screen(demo_db, monkeypatch):
    from filterdb.cli.demo import print_demo_comparison
    monkeypatch.setenv("COLUMNS", "100")
    out = io.StringIO()
    result, baseline = print_demo_comparison(demo_db, permutations=99, file=out)
    lines = fits(out.getvalue(), 100)
    assert len(lines) <= 40, "\n".join(lines)
    text = out.getvalue()
    assert "p Wilcoxon" in text and "Baseline: normal vs normal" in text
    assert "A = normal, seeds 0-3: 8 models" in text and "B = normal, seeds 4-7: 8 models" in text
    assert "model_id=" not in text  # groups named as a person names them
    assert "filterdb report robust normal" in text and "filterdb compare robust normal --layer deciles" in text
    assert len(baseline.models) == 16 and set(baseline.models["group"]) == {"normal,seed=0|1|2|3",
                                                                             "normal,seed=4|5|6|7"}


def test_only_rank_0_prints_a_training_result(monkeypatch, capsys):
    import pandas as pd

    from filterdb.cli.training import _emit_result
    frame = pd.DataFrame([{"model": "cnn4-16", "clean_acc": 98.3}])
    monkeypatch.setenv("RANK", "1")
    _emit_result(frame, "table", "training result")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    _emit_result(frame, "table", "training result")
    assert "cnn4-16" in capsys.readouterr().out
    monkeypatch.delenv("RANK")
    _emit_result(frame, "csv", "training result")
    assert capsys.readouterr().out.splitlines()[1] == "cnn4-16,98.3"
