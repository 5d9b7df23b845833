"""`filterdb show MODEL [LAYER]`: a model's layers with their metrics, a layer's filters as .npy or a picture."""
import json

import numpy as np
import pytest
import torch
from cli_results import one_error_line, run
from torch import nn

from filterdb.analysis.groups import find_model
from filterdb.analysis.metrics_table import database_metrics
from filterdb.build import add_module
from filterdb.errors import FilterDBError
from filterdb.ids import model_id
from filterdb.store import FilterDB, open_database


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("show") / "db"
    torch.manual_seed(0)
    modules = {"cnn-robust-s0": nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 7, 3, groups=1)),
               "cnn-normal-s0": nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 5, 5, groups=5))}
    with FilterDB.open(path, "a") as fdb:
        for name, module in modules.items():
            add_module(fdb, module, source="test", name=name, input_shape=(3, 12, 12),
                           record={"training": name.split("-")[1]})
    return path, modules


def test_layers_table_holds_the_metrics(db):
    path, _ = db
    result = run("show", "cnn-robust-s0", "--db", path, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    expected = database_metrics(path, [model_id("test", "cnn-robust-s0")], kernel=None)
    assert [r["name"] for r in rows] == ["0", "2"]
    assert [r["n_filters"] for r in rows] == [15, 35]
    for row, (_, want) in zip(rows, expected.iterrows()):
        assert row["l2_norm"] == pytest.approx(want["l2_norm"], rel=1e-12)
        assert row["orthogonality"] == pytest.approx(want["orthogonality"], rel=1e-12)
    by_key = run("show", "test:cnn-robust-s0", "--db", path, "--format", "csv")
    by_id = run("show", model_id("test", "cnn-robust-s0"), "--db", path, "--format", "csv")
    assert by_key.stdout == by_id.stdout and by_key.stdout.count("\n") == 3
    one_layer = json.loads(run("show", "cnn-robust-s0", "2", "--db", path, "--format", "json").stdout)
    assert [r["layer_index"] for r in one_layer] == [1]
    assert json.loads(run("show", "cnn-robust-s0", "1", "--db", path, "--format", "json").stdout) == one_layer


def test_npy_is_the_module_weights_bit_for_bit(db, tmp_path):
    path, modules = db
    for name, layer, module in (("cnn-robust-s0", "2", modules["cnn-robust-s0"][2]),
                                ("cnn-normal-s0", "2", modules["cnn-normal-s0"][2])):
        out = tmp_path / f"{name}.npy"
        result = run("show", name, layer, "--db", path, "--npy", out)
        assert result.exit_code == 0, result.output
        stored = np.load(out)
        kh, kw = module.kernel_size
        expected = module.weight.detach().numpy().reshape(-1, kh, kw)
        assert stored.dtype == np.float32 and stored.shape == expected.shape
        assert stored.tobytes() == expected.tobytes()
    export = tmp_path / "x.h5"
    with open_database(path) as fdb:
        fdb.export(export)
    assert run("show", "cnn-robust-s0", "0", "--db", export, "--npy", tmp_path / "e.npy").exit_code == 0
    expected = modules["cnn-robust-s0"][0].weight.detach().numpy().reshape(-1, 3, 3)
    assert np.load(tmp_path / "e.npy").tobytes() == expected.tobytes()


def test_plot_draws_the_layer(db, tmp_path):
    path, _ = db
    out = tmp_path / "layer.png"
    result = run("show", "cnn-normal-s0", "0", "--db", path, "--plot", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp"))


def test_errors_are_one_line_and_come_before_the_work(db, tmp_path):
    path, _ = db
    one_error_line(run("show", "cnn-robst-s0", "--db", path), "cnn-robust-s0")  # near match suggested
    one_error_line(run("show", "cnn", "--db", path), "cnn")
    one_error_line(run("show", "cnn-robust-s0", "9", "--db", path), "'9'", "0:0")
    one_error_line(run("show", "cnn-robust-s0", "0", "--db", path, "--plot", tmp_path / "no" / "x.png"),
                   tmp_path / "no")
    one_error_line(run("show", "cnn-robust-s0", "0", "--db", path, "--plot", tmp_path / "x.jpgg"), ".png")
    one_error_line(run("show", "cnn-robust-s0", "0", "--db", path, "--npy", tmp_path / "x.txt"), ".npy")
    one_error_line(run("show", "cnn-robust-s0", "--db", path, "--npy", tmp_path / "x.npy"), "LAYER")
    assert not list(tmp_path.iterdir())


def test_find_model_by_id_key_name_and_case():
    import pandas as pd
    models = pd.DataFrame({"model_id": ["a1", "b2", "c3"], "key": ["s:Alpha", "s:beta", "t:beta"],
                           "name": ["Alpha", "beta", "beta"]}, index=["a1", "b2", "c3"])
    assert find_model(models, "a1") == "a1"
    assert find_model(models, "s:beta") == "b2"
    assert find_model(models, "alpha") == "a1"
    with pytest.raises(FilterDBError, match="names 2 models: b2 .*c3"):
        find_model(models, "beta")
    with pytest.raises(FilterDBError, match="near matches: Alpha"):
        find_model(models, "Alpah")


def test_model_by_a_selection_that_picks_one(db):
    path, _ = db
    by_glob = run("show", "*robust*", "--db", path, "--format", "csv")
    assert by_glob.exit_code == 0 and by_glob.stdout == run("show", "cnn-robust-s0", "--db", path,
                                                            "--format", "csv").stdout
    assert run("show", "normal", "--db", path, "--format", "csv").stdout.count("\n") == 3
    one_error_line(run("show", "cnn-*", "--db", path), "selects 2 models", "narrow it to one")
