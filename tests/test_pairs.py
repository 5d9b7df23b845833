"""Matched pairs in the model table: twins from the checkpoints' pairing, and the ranking of counterparts."""
import io

import pandas as pd
from click.testing import CliRunner

from filterdb import open_database
from filterdb.cli import main
from filterdb.model_pairs import TWIN_COLUMNS, ranked_pairs, twin_pairs


def table(rows) -> pd.DataFrame:
    """A model table with the columns the pair functions read; model_id = key's last part."""
    frame = pd.DataFrame(rows, columns=["key", "name", "training", "dataset", "architecture", "pair", "pair_role",
                                        "seed"])
    frame["model_id"] = frame["key"].str.split(":").str[-1]
    return frame.set_index("model_id", drop=False).rename_axis(None)


MODELS = table([
    ("t:a-n", "d/a/normal", "normal", "digits", "cnn4-16", "a@11111111", "normal", 0),
    ("t:a-r", "d/a/pgd", "robust", "digits", "cnn4-16", "a@11111111", "robust", 0),
    ("t:a-t", "d/a/trades", "robust", "digits", "cnn4-16", "a@11111111", "robust", 0),  # a second robust twin
    ("t:b-n", "d/b/normal", "normal", "digits", "cnn4-16", "b@22222222", "normal", 1),
    ("t:b-r", "d/b/pgd", "robust", "digits", "cnn4-16", "b@22222222", "robust", 1),
    ("t:c-n1", "d/c/normal", "normal", "digits", "cnn4-16", "c@33333333", "normal", 2),  # two normals: ambiguous
    ("t:c-n2", "d/c2/normal", "normal", "digits", "cnn4-16", "c@33333333", "normal", 2),
    ("t:c-r", "d/c/pgd", "robust", "digits", "cnn4-16", "c@33333333", "robust", 2),
    ("t:x-r", "d/x/pgd", "robust", "digits", "resnet8-8", "", "", -1),  # trained alone
    ("t:y-n", "d/y/normal", "normal", "cifar10", "cnn4-16", "", "", -1),
])


def test_twins_are_the_one_normal_model_of_a_pair():
    twins = twin_pairs(MODELS)
    assert list(twins.columns) == TWIN_COLUMNS
    assert twins[["robust", "normal", "pair", "seed"]].values.tolist() == [
        ["t:a-r", "t:a-n", "a@11111111", 0],
        ["t:a-t", "t:a-n", "a@11111111", 0],
        ["t:b-r", "t:b-n", "b@22222222", 1],
    ]
    assert twins["robust_id"].tolist() == ["a-r", "a-t", "b-r"] and twins["normal_id"].tolist() == ["a-n"] * 2 + ["b-n"]
    assert twin_pairs(MODELS.drop(columns=["pair"])).empty  # a table without pair metadata has no twins


def test_ranked_pairs_put_twins_first_then_counterparts():
    ranked = ranked_pairs(MODELS)
    assert len(ranked) == 5 * 5  # every robust x normal combination
    first = list(zip(ranked["robust_id"], ranked["normal_id"]))[:3]
    assert first == [("a-r", "a-n"), ("a-t", "a-n"), ("b-r", "b-n")]
    assert ranked["twin"].sum() == 3
    # then same dataset and architecture; the cifar10 normal model and the resnet robust one come last
    rest = ranked.iloc[3:]
    assert rest["same_dataset"].is_monotonic_decreasing
    assert not ranked.iloc[-1]["same_dataset"] and not ranked.iloc[-1]["same_architecture"]
    assert (ranked.iloc[-1]["robust_id"], ranked.iloc[-1]["normal_id"]) == ("x-r", "y-n")
    assert ranked_pairs(MODELS[MODELS["training"] == "normal"]).empty


def test_pairs_are_detected_from_the_demo_database(demo_db):
    from filterdb.training.demo import DEMO_PAIRS

    with open_database(demo_db) as db:
        models = db.models
        twins = twin_pairs(models)
    assert len(twins) == len(DEMO_PAIRS) >= 8
    assert len(set(twins["seed"])) >= 8
    by_key = models.set_index("key")
    for twin in twins.itertuples():
        robust, normal = by_key.loc[twin.robust], by_key.loc[twin.normal]
        assert robust["name"].rsplit("/", 1)[0] == normal["name"].rsplit("/", 1)[0]  # digits/<pair>/pgd, .../normal
        assert robust["model_string"] == normal["model_string"] and robust["seed"] == normal["seed"] == twin.seed
        assert (robust["training"], normal["training"]) == ("robust", "normal")
        assert twin.pair.startswith(robust["name"].split("/")[1] + "@")  # '<run>@<init[:8]>'

    result = CliRunner().invoke(main, ["pairs", "--db", str(demo_db), "--format", "csv"])
    assert result.exit_code == 0, result.output
    listed = pd.read_csv(io.StringIO(result.output[result.output.index("robust_model,"):]), keep_default_na=False)
    assert len(listed) == len(DEMO_PAIRS)
    assert dict(zip(listed["robust_model"], listed["twin"])) == dict(zip(twins["robust"], twins["normal"]))
    for row in listed.itertuples():
        # every normal model of the architecture is a counterpart; the twin is one of them
        same = models[(models["training"] == "normal") & (models["architecture"] == row.architecture)]
        assert row.normal_models.split(", ") == sorted(same["key"]) and row.twin in row.normal_models


def test_train_pair_then_add_names_the_twin(tmp_path):
    """'filterdb train pair' writes two matched checkpoints; added to a database, 'pairs' names the twin."""
    from filterdb.training.checkpoint import load_checkpoint
    from filterdb.training.pair_training import check_pair

    out, db = tmp_path / "run-a", tmp_path / "db"
    args = ["train", "pair", "-m", "cnn1-2", "-e", "1", "--eval-samples", "16", "--steps", "1", "--eval-steps", "1",
            "-o", str(out), "--no-progress", "--format", "csv"]
    trained = CliRunner().invoke(main, args)
    assert trained.exit_code == 0, trained.output
    check_pair(out / "normal" / "last.pt", out / "pgd" / "last.pt")
    pairing = {role: load_checkpoint(out / role / "last.pt").pairing for role in ("normal", "pgd")}
    assert (pairing["normal"]["role"], pairing["pgd"]["role"]) == ("normal", "robust")
    assert pairing["normal"]["init_sha256"] == pairing["pgd"]["init_sha256"]

    added = CliRunner().invoke(main, ["build", "--checkpoints", str(out), "--db", str(db)])
    assert added.exit_code == 0, added.output
    listed = CliRunner().invoke(main, ["pairs", "--db", str(db), "--format", "csv"])
    assert listed.exit_code == 0, listed.output
    row = pd.read_csv(io.StringIO(listed.output[listed.output.index("robust_model,"):]), keep_default_na=False).iloc[0]
    with open_database(db) as opened:
        keys = opened.models.set_index("pair_role")["key"]
        assert set(opened.models["pair"]) == {f"run-a@{pairing['pgd']['init_sha256'][:8]}"}
    assert (row["robust_model"], row["twin"], row["pair"]) == (keys["robust"], keys["normal"],
                                                                f"run-a@{pairing['pgd']['init_sha256'][:8]}")
