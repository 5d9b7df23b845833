"""One selection grammar (compare's group expressions, name globs) for info, metrics, export and pairs."""
import json

import pandas as pd
import pytest
import torch
from cli_results import run
from torch import nn

from filterdb.analysis.groups import parse_group, select_models
from filterdb.build import add_module
from filterdb.errors import FilterDBError
from filterdb.store import FilterDB, open_database

NAMES = {"cifar/wrn-a/robust": ("robust", "cifar10", "WRN"), "cifar/wrn-a/normal": ("normal", "cifar10", "WRN"),
         "digits/cnn/robust": ("robust", "digits", "cnn"), "digits/cnn/normal": ("normal", "digits", "cnn")}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("select") / "db"
    with FilterDB.open(path, "a") as fdb:
        for seed, (name, (training, dataset, arch)) in enumerate(NAMES.items()):
            torch.manual_seed(seed)
            add_module(fdb, nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)), source="test", name=name,
                           input_shape=(1, 8, 8), record={"training": training, "dataset": dataset,
                                                          "architecture": arch})
    return path


def test_name_globs_in_the_grammar():
    models = pd.DataFrame({"name": ["cifar/wrn-a/robust", "cifar/wrn-a/normal", "digits/cnn/robust"],
                           "training": ["robust", "normal", "robust"]}, index=["a", "b", "c"])
    assert parse_group("*wrn*,robust") == [("name", "*wrn*"), ("training", "robust")]
    assert list(select_models(models, "*wrn*").index) == ["a", "b"]
    assert list(select_models(models, "name=CIFAR/*").index) == ["a", "b"]
    assert list(select_models(models, "robust,name=*/robust|digits/*").index) == ["a", "c"]
    with pytest.raises(FilterDBError, match="selects no models: no name=\\*vit\\*"):
        select_models(models, "*vit*")
    with pytest.raises(FilterDBError, match="name glob"):
        select_models(models, "wrn")


def test_info_metrics_export_pairs_select_the_same_models(db, tmp_path):
    expr = "robust,arch=WRN|cnn,name=*/robust"
    info = run("info", "--db", db, "--select", expr, "--json")
    assert info.exit_code == 0, info.output
    data = json.loads(info.stdout)
    assert data["models"] == 2 and data["layers"] == 4 and data["filters"] == 2 * (2 + 4)
    assert sorted(m["name"] for m in data["model_table"]) == ["cifar/wrn-a/robust", "digits/cnn/robust"]
    metrics = json.loads(run("metrics", "--db", db, "--select", "dataset=digits", "--format", "json").stdout)
    assert sorted({r["model"] for r in metrics}) == ["digits/cnn/normal", "digits/cnn/robust"]
    both = run("metrics", "--db", db, "--select", "normal", "--models", "digits/cnn/robust")
    assert both.exit_code == 1 and "--select" in both.output
    out = tmp_path / "x.h5"
    assert run("export", out, "--db", db, "--select", expr).exit_code == 0
    with open_database(out) as packed:
        assert sorted(packed.models["name"]) == ["cifar/wrn-a/robust", "digits/cnn/robust"]
    pairs = json.loads(run("pairs", "--db", db, "--select", "cifar*", "--format", "json").stdout)
    assert [(p["robust_model"], p["normal_models"]) for p in pairs] == [("test:cifar/wrn-a/robust",
                                                                          "test:cifar/wrn-a/normal")]
    bad = run("info", "--db", db, "--select", "arch=vit")
    assert bad.exit_code == 1 and bad.output.count("error:") == 1 and "WRN" in bad.output
