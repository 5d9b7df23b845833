"""`filterdb leaderboards NAME --db`: which models are already in the database, sortable by accuracy."""
import json

import torch
from cli_results import run
from torch import nn

from filterdb.build import add_module
from filterdb.cli.catalog import leaderboard_specs
from filterdb.store import FilterDB


def test_marks_models_in_the_database_and_sorts(tmp_path):
    specs = leaderboard_specs("linf-cifar10", offline=True)
    chosen = [specs[3], specs[10]]
    with FilterDB.open(tmp_path / "db", "a") as db:  # stand-ins stored under the leaderboard models' identity
        for spec in chosen:
            torch.manual_seed(0)
            add_module(db, nn.Sequential(nn.Conv2d(3, 2, 3)), source=spec.source, name=spec.name,
                          input_shape=(3, 8, 8))
    result = run("leaderboards", "linf-cifar10", "--db", tmp_path / "db", "--sort", "robust_acc", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == len(specs)
    assert sorted(r["model"] for r in rows if r["in_db"]) == sorted(s.name.rsplit("/", 1)[-1] for s in chosen)
    accs = [r["robust_acc"] for r in rows if r["robust_acc"] is not None]
    assert accs == sorted(accs, reverse=True) and len(accs) > 10
    assert all(r["robust_acc"] is None for r in rows[len(accs):])  # unknown accuracies last
    by_clean = json.loads(run("leaderboards", "linf-cifar10", "--db", tmp_path / "db", "--sort", "clean_acc",
                              "--format", "json").stdout)
    clean = [r["clean_acc"] for r in by_clean if r["clean_acc"] is not None]
    assert clean == sorted(clean, reverse=True)
    by_name = json.loads(run("leaderboards", "linf-cifar10", "--sort", "name", "--format", "json").stdout)
    assert [r["model"].lower() for r in by_name] == sorted(r["model"].lower() for r in by_name)
    assert "in_db" not in by_name[0]  # no database here (FILTERDB_HOME/db does not exist)
    missing = run("leaderboards", "linf-cifar10", "--db", tmp_path / "nope")
    assert missing.exit_code == 1 and missing.output.count("error:") == 1 and "nope" in missing.output
