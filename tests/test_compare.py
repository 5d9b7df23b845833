"""Comparisons on a real (small) database: statistics with known values, streaming, cache, CLI."""
import json
import math
from concurrent.futures import ProcessPoolExecutor

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from filterdb import open_database
from filterdb.analysis import cache
from filterdb.analysis.compare import compare_groups, print_demo_comparison
from filterdb.analysis.database import database_metrics
from filterdb.analysis.divergence import divergence
from filterdb.cli import main
from filterdb.errors import FilterDBError
from filterdb.store import FilterDB


def net(seed: int, dead_first: int = 0) -> nn.Module:
    """Three 3x3 convs; the first ``dead_first`` filters of the first layer are zero."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1))
    with torch.no_grad():
        model[0].weight[:dead_first] = 0
    return model


def add(db, name, training, dataset="digits", seed=0, dead_first=0):
    return db.add_module(net(seed, dead_first), source="test", name=name, input_shape=(1, 8, 8),
                         record={"training": training, "dataset": dataset, "architecture": "cnn"})


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    """Robust models have 2 of 4 first-layer filters dead (sparsity 0.5), normal ones none."""
    path = tmp_path_factory.mktemp("cmp") / "db"
    with FilterDB.open(path, "a") as db:
        for i in range(3):
            add(db, f"robust-{i}", "robust", seed=i, dead_first=2)
            add(db, f"normal-{i}", "normal", seed=10 + i)
        add(db, "robust-c", "robust", dataset="cifar10", seed=20, dead_first=2)
        add(db, "normal-c", "normal", dataset="cifar10", seed=21)
    return path


def test_first_layer_statistics_by_hand(db_path):
    result = compare_groups(db_path, "robust,dataset=digits", "normal,dataset=digits", layer="first")
    row = result.tests.set_index("metric").loc["sparsity"]
    assert (row["n_a"], row["n_b"]) == (3, 3)
    assert (row["mean_a"], row["mean_b"], row["difference"]) == (0.5, 0.0, 0.5)
    assert (row["ci_low"], row["ci_high"]) == (0.5, 0.5)
    assert row["cliffs_delta"] == 1.0
    # ties -> scipy's normal approximation: U = 9, mu = 4.5, sigma^2 = 9/12 (7 - 48/30), continuity 0.5
    z = (9 - 4.5 - 0.5) / math.sqrt(9 / 12 * (7 - 48 / 30))
    assert row["p_value"] == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    groups = result.groups.set_index("group")
    assert groups.loc["robust,dataset=digits", "models"] == 3
    assert groups.loc["robust,dataset=digits", "filters"] == 12  # 3 models x 4 first-layer filters
    div = result.divergence.iloc[0]
    assert (div["kernel"], div["filters_a"], div["filters_b"]) == ("3x3", 6, 12)  # dead filters dropped
    assert div["divergence"] > 0


def test_each_model_counts_once_over_all_layers(db_path):
    result = compare_groups(db_path, "robust", "normal", layer="all", kernel="all")
    tests = result.tests.set_index("metric")
    assert (tests.loc["ve_raw", "n_a"], tests.loc["ve_raw", "n_b"]) == (4, 4)
    per_model = result.per_model
    assert list(per_model["n_layers"].unique()) == [4]
    metrics = database_metrics(db_path)
    one = metrics[metrics["model"] == "robust-0"]
    mine = per_model[per_model["model_id"] == one["model_id"].iloc[0]]
    assert mine["l1_norm"].iloc[0] == pytest.approx(one["l1_norm"].mean())
    assert any("counts once" in note for note in result.notes)


def test_deciles_and_by_dataset(db_path):
    result = compare_groups(db_path, "robust", "normal", layer="deciles", by="dataset", kernel="all")
    assert set(result.tests["by"]) == {"digits", "cifar10"}
    # 4 convs at depth 0, 1/3, 2/3, 1: deciles "0", (0.3, 0.4], (0.6, 0.7], (0.9, 1]
    assert list(dict.fromkeys(result.tests["layers"])) == ["0", "(0.3, 0.4]", "(0.6, 0.7]", "(0.9, 1]"]
    cifar = result.tests[(result.tests["by"] == "cifar10") & (result.tests["metric"] == "sparsity")]
    assert list(cifar["n_a"]) == [1] * 4
    assert set(result.divergence["kernel"]) == {"3x3", "1x1"}
    frame = result.to_frame()
    assert {"by", "layers", "metric", "p_value", "cliffs_delta", "divergence"} <= set(frame.columns)


def test_streamed_divergence_equals_the_in_memory_one(db_path):
    result = compare_groups(db_path, "robust", "normal", layer="all", kernel="3x3")
    with open_database(db_path) as db:
        groups = {g: list(db.models.index[db.models["training"] == g]) for g in ("robust", "normal")}
        layers = {g: [f for row, f in db.iter_layers(db.layers[db.layers["model_id"].isin(ms)])
                      if row["kernel"] == "3x3"] for g, ms in groups.items()}
    expected = divergence(layers["robust"], layers["normal"])
    assert result.divergence["divergence"].iloc[0] == pytest.approx(expected.value, rel=1e-9)
    assert result.divergence["filters_a"].iloc[0] == expected.n_a


def test_a_process_pool_gives_the_same_result(db_path):
    plain = compare_groups(db_path, "robust", "normal", layer="deciles")
    with ProcessPoolExecutor(max_workers=2) as pool:
        pooled = compare_groups(db_path, "robust", "normal", layer="deciles", executor=pool)
    assert pooled.divergence["divergence"].tolist() == plain.divergence["divergence"].tolist()
    assert pooled.tests["p_value"].equals(plain.tests["p_value"])


def test_a_dask_client_gives_the_same_result(db_path):
    from dask.distributed import Client
    plain = compare_groups(db_path, "robust", "normal", layer="last")
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        distributed = compare_groups(db_path, "robust", "normal", layer="last", executor=client)
    assert distributed.divergence["divergence"].tolist() == plain.divergence["divergence"].tolist()


def test_errors_list_the_valid_choices(db_path):
    with pytest.raises(FilterDBError, match="training values there: normal, robust"):
        compare_groups(db_path, "training=adversarial", "normal")
    with pytest.raises(FilterDBError, match="unknown model column 'size'.*architecture"):
        compare_groups(db_path, "robust", "size=3")
    with pytest.raises(FilterDBError, match="no 7x7 layers.*1x1, 3x3"):
        compare_groups(db_path, "robust", "normal", kernel="7x7")
    with pytest.raises(FilterDBError, match="unknown metric.*sparsity"):
        compare_groups(db_path, "robust", "normal", metrics=["beauty"])
    with pytest.raises(FilterDBError, match="unknown model column 'colour' for --by"):
        compare_groups(db_path, "robust", "normal", by="colour")


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    path = tmp_path / "db"
    with FilterDB.open(path, "a") as db:
        mid = add(db, "m", "robust", seed=1)
    first = database_metrics(path)
    cache_file = cache.cache_path(path, mid)
    assert cache_file.exists()
    data = json.loads(cache_file.read_text())
    data["layers"]["l1_norm"][0] = 123.0  # a cache hit returns what the file says
    cache_file.write_text(json.dumps(data))
    assert database_metrics(path)["l1_norm"].iloc[0] == 123.0
    monkeypatch.setattr(cache, "METRICS_VERSION", "next")  # a new definition: recomputed
    assert database_metrics(path)["l1_norm"].iloc[0] == pytest.approx(first["l1_norm"].iloc[0])
    with FilterDB.open(path, "a") as db:  # re-extraction with other weights: recomputed
        add(db, "m", "robust", seed=2)
    assert database_metrics(path)["l1_norm"].iloc[0] != pytest.approx(first["l1_norm"].iloc[0])


def test_nan_weights_are_rejected_naming_model_and_layer(tmp_path):
    path = tmp_path / "db"
    with FilterDB.open(path, "a") as db:
        mid = db.add_module(net(0), source="test", name="broken", input_shape=(1, 8, 8), record={"training": "normal"})
        shard = db.shard_path(mid)
    with h5py.File(shard, "r+") as f:  # extraction refuses NaN: corrupt the stored filters of layer "2"
        f["filters/3x3"][10, 1, 1] = np.nan
    with pytest.raises(FilterDBError, match=r"model \w+ \(broken\), layer 2: 1 NaN/Inf weight"):
        database_metrics(path)


def test_cli_compare_and_metrics(db_path, tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["compare", "robust", "normal", "--layer", "first", "--db", str(db_path),
                               "--format", "json", "--plot", str(tmp_path / "fig.png")])
    assert out.exit_code == 0, out.output
    records = json.loads(out.stdout)
    sparsity = next(r for r in records if r["metric"] == "sparsity")
    assert (sparsity["difference"], sparsity["cliffs_delta"]) == (0.5, 1.0)
    assert any(r["metric"] == "divergence" and r["divergence"] > 0 for r in records)
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    out = runner.invoke(main, ["compare", "robust", "normal", "--layer", "deciles", "--db", str(db_path), "-j", "2"])
    assert out.exit_code == 0 and "Cliff" in out.output and "(0.9, 1]" in out.output
    out = runner.invoke(main, ["metrics", "--db", str(db_path), "--models", "robust-0,normal-0", "--format", "csv"])
    assert out.exit_code == 0 and len(out.stdout.strip().splitlines()) == 1 + 2 * 4
    out = runner.invoke(main, ["compare", "robust", "dataset=imagenet", "--db", str(db_path)])
    assert out.exit_code == 1 and "dataset values there: cifar10, digits" in out.output


def test_demo_entry_point_prints_the_first_layer_comparison(db_path, capsys):
    result = print_demo_comparison(db_path)
    printed = capsys.readouterr().out
    assert "robust vs normal, layers: first" in printed and "Mann-Whitney U p-value" in printed
    assert set(result.tests["layers"]) == {"first"}
    assert not math.isnan(result.divergence["divergence"].iloc[0])
