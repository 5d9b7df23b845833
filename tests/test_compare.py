"""Comparisons on a real (small) database: statistics with known values, streaming, cache, CLI."""
import json
import math
from concurrent.futures import ProcessPoolExecutor

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from tiny_nets import three_conv_net

from filterdb import open_database
from filterdb.analysis import cache
from filterdb.analysis.compare import compare_groups
from filterdb.analysis.divergence import divergence
from filterdb.analysis.metrics_table import database_metrics
from filterdb.build import add_module
from filterdb.cli import main
from filterdb.cli.demo import print_demo_comparison
from filterdb.errors import FilterDBError
from filterdb.store import FilterDB


def add(db, name, training, dataset="digits", seed=0, dead_first=0):
    return add_module(db, three_conv_net(seed, dead_first), source="test", name=name, input_shape=(1, 8, 8),
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
    data["layers"]["l1_norm"][0] = 123.0  # an edited cache fails its digest: recomputed, never returned
    cache_file.write_text(json.dumps(data))
    assert database_metrics(path)["l1_norm"].iloc[0] == pytest.approx(first["l1_norm"].iloc[0])
    monkeypatch.setattr(cache, "METRICS_VERSION", "next")  # a new definition: recomputed
    assert database_metrics(path)["l1_norm"].iloc[0] == pytest.approx(first["l1_norm"].iloc[0])
    with FilterDB.open(path, "a") as db:  # re-extraction with other weights: recomputed
        add(db, "m", "robust", seed=2)
    assert database_metrics(path)["l1_norm"].iloc[0] != pytest.approx(first["l1_norm"].iloc[0])


def test_nan_weights_are_rejected_naming_model_and_layer(tmp_path):
    path = tmp_path / "db"
    with FilterDB.open(path, "a") as db:
        mid = add_module(db, three_conv_net(0), source="test", name="broken", input_shape=(1, 8, 8), record={"training": "normal"})
        shard = db.shard_path(mid)
    with h5py.File(shard, "r+") as f:  # extraction refuses NaN: corrupt the stored filters of layer "2"
        f["filters/3x3"][10, 1, 1] = np.nan
    # the stored bytes changed behind the shard's back: its checksum names the model and layer
    with pytest.raises(FilterDBError, match=r"model \w+ \(broken\), layer 2 do not match their checksum"):
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
    out = runner.invoke(main, ["compare", "robust", "normal", "--layer", "deciles", "--db", str(db_path), "-j", "2",
                               "--kernel", "all"])
    assert out.exit_code == 0 and "Cliff" in out.output and "(0.9, 1]" in out.output
    out = runner.invoke(main, ["metrics", "--db", str(db_path), "--models", "robust-0,normal-0", "--format", "csv",
                               "--kernel", "all"])
    assert out.exit_code == 0 and len(out.stdout.strip().splitlines()) == 1 + 2 * 4
    out = runner.invoke(main, ["metrics", "--db", str(db_path), "--models", "robust-0", "--format", "csv"])
    assert out.exit_code == 0 and len(out.stdout.strip().splitlines()) == 1 + 3  # 3x3 layers by default
    out = runner.invoke(main, ["compare", "robust", "dataset=imagenet", "--db", str(db_path)])
    assert out.exit_code == 1 and "dataset values there: cifar10, digits" in out.output


def test_demo_entry_point_prints_the_comparison_and_its_baseline(db_path, capsys):
    result, baseline = print_demo_comparison(db_path, permutations=99)
    printed = capsys.readouterr().out
    assert "robust vs normal, layers: first, kernel: 3x3" in printed and "p (MWU) = Mann-Whitney U" in printed
    assert "Baseline: normal vs normal" in printed and "perm p" in printed
    assert set(result.tests["layers"]) == {"first"}
    assert not math.isnan(result.divergence["divergence"].iloc[0])
    assert set(baseline.models["group"]) == {baseline.group_a, baseline.group_b}
    assert len(baseline.models) == 4  # the 4 normal models, split 2 + 2


def reference_filters(db, layers):
    return [db.read_layer(row) for _, row in layers.iterrows()]


def test_one_decile_on_the_database_basis_matches_the_authors_pipeline(db_path):
    from test_divergence import reference_divergence

    from filterdb.analysis.groups import select_layers
    result = compare_groups(db_path, "robust", "normal", layer="deciles", metrics=["sparsity"])
    row = result.divergence.set_index("layers").loc["(0.6, 0.7]"]
    assert row["basis"] == "database" and row["kernel"] == "3x3"
    with open_database(db_path) as db:
        everything = db.layers[db.layers["kernel"] == "3x3"]  # every model of the database
        filters = reference_filters(db, everything)
        decile = select_layers(everything, "deciles")
        decile = decile[decile["layers"] == "(0.6, 0.7]"]
        training = db.models["training"]
        position = {index: i for i, index in enumerate(everything.index)}
        group = {g: [position[i] for i in decile.index if training[decile.loc[i, "model_id"]] == g]
                 for g in ("robust", "normal")}
    expected = reference_divergence(filters, group["robust"], group["normal"])
    assert row["divergence"] == pytest.approx(expected, rel=1e-9)
    # one basis for every decile and comparison, cached in the database until the models change
    cached = sorted((db_path / "divergence").glob("*.json"))
    assert "database-3x3.json" in [p.name for p in cached]
    other = compare_groups(db_path, "robust,dataset=digits", "normal,dataset=digits", layer="first")
    assert other.divergence["basis"].iloc[0] == "database"


def test_basis_cache_is_invalidated_when_the_models_change(tmp_path):
    from filterdb.analysis.basis import basis_path, reference_basis
    path = tmp_path / "db"
    with FilterDB.open(path, "a") as db:
        add(db, "r", "robust", seed=1, dead_first=2)
        add(db, "n", "normal", seed=2)
    first = reference_basis(path, "3x3")
    assert basis_path(path, "database", "3x3").exists()
    assert reference_basis(path, "3x3").hi == first.hi  # from the cache
    with FilterDB.open(path, "a") as db:
        add(db, "n2", "normal", seed=3)
    second = reference_basis(path, "3x3")
    assert second.n_range > first.n_range
    data = json.loads(basis_path(path, "database", "3x3").read_text())
    assert data["basis"]["n_range"] == second.n_range


def test_basis_variants(db_path):
    groups = compare_groups(db_path, "robust", "normal", layer="all", basis="groups")
    database = compare_groups(db_path, "robust", "normal", layer="all")
    # robust and normal are every model here: the groups' basis is the database's
    assert groups.divergence["divergence"].iloc[0] == pytest.approx(database.divergence["divergence"].iloc[0],
                                                                     rel=1e-12)
    digits = compare_groups(db_path, "robust", "normal", layer="first", basis="dataset=digits")
    assert digits.divergence["basis"].iloc[0] == "dataset=digits" and digits.divergence["divergence"].iloc[0] > 0
    first = compare_groups(db_path, "robust,dataset=digits", "normal,dataset=digits", layer="first", basis="groups")
    assert first.divergence["basis"].iloc[0] == "groups"


def test_a_group_of_one_model_gets_no_test_and_says_so(db_path):
    result = compare_groups(db_path, "robust", "normal", layer="first", by="dataset")
    cifar = result.tests[(result.tests["by"] == "cifar10") & (result.tests["metric"] == "sparsity")].iloc[0]
    assert (cifar["n_a"], cifar["n_b"]) == (1, 1)
    assert math.isnan(cifar["p_value"]) and math.isnan(cifar["ci_low"]) and math.isnan(cifar["perm_p"])
    assert "fewer than 2 models" in cifar["note"]
    shown = result.display()
    assert shown[(shown["by"] == "cifar10")]["95% CI"].str.contains("fewer than 2 models").all()
    div = result.divergence.set_index("by").loc["cifar10"]
    assert math.isnan(div["perm_p"]) and "fewer than 2 models" in div["note"]


def test_pooled_aggregation_weights_layers_as_the_paper(db_path):
    pooled = compare_groups(db_path, "robust", "normal", layer="all", aggregate="pooled", with_divergence=False)
    plain = compare_groups(db_path, "robust", "normal", layer="all", with_divergence=False)
    metrics = database_metrics(db_path)
    one = metrics[(metrics["model"] == "robust-0") & (metrics["kernel"] == "3x3")]
    mine = pooled.per_model[pooled.per_model["model_id"] == one["model_id"].iloc[0]].iloc[0]
    assert mine["orthogonality"] == pytest.approx((one["orthogonality"] * one["out_channels"]).sum()
                                                  / one["out_channels"].sum(), rel=1e-12)
    assert mine["ve_linf"] == pytest.approx((one["ve_linf"] * one["n_nonsparse"]).sum() / one["n_nonsparse"].sum(),
                                            rel=1e-12)
    # sparsity pooled over filters: 2 dead of 4 + 32 + 64 filters
    assert mine["sparsity"] == pytest.approx(2 / (4 + 32 + 64), rel=1e-12)
    assert plain.per_model.iloc[0]["sparsity"] != mine["sparsity"]
    assert any("pools its selected layers" in note for note in pooled.notes)


def test_pairs_from_the_demo_databases_metadata(demo_db):
    result = compare_groups(demo_db, "robust", "normal", layer="first", permutations=99)
    with open_database(demo_db) as db:
        models = db.models
    n = int((models["training"] == "robust").sum())  # every demo model is in a pair
    assert (result.tests["n_pairs"] == n).all()
    pairs = result.pairs[result.pairs["metric"] == "ve_linf"]
    assert len(pairs) == n
    for _, p in pairs.iterrows():
        a, b = models.loc[p["model_a"]], models.loc[p["model_b"]]
        assert a["pair"] == b["pair"] == p["pair"] != "" and a["seed"] == b["seed"]
        assert (a["training"], b["training"]) == ("robust", "normal")
    row = result.tests.set_index("metric").loc["ve_linf"]
    assert row["paired_difference"] == pytest.approx(pairs["difference"].mean(), rel=1e-12)
    from scipy.stats import wilcoxon
    assert row["paired_p_value"] == pytest.approx(wilcoxon(pairs["difference"]).pvalue, rel=1e-12)
    assert row["paired_perm_p"] >= 2 / 2 ** n and row["paired_n_permutations"] == min(2 ** n, 99)
    shown = result.display()
    assert set(shown["test"]) == {"unpaired: MWU", "paired: Wilcoxon"}
    with pytest.raises(FilterDBError, match="no pairs to test"):
        compare_groups(demo_db, "robust", "normal", paired_by="dataset", with_divergence=False)
    unpaired = compare_groups(demo_db, "robust", "normal", paired_by=None, with_divergence=False)
    assert (unpaired.tests["n_pairs"] == 0).all()


def test_matched_pairs_by_hand(tmp_path):
    path = tmp_path / "db"
    with FilterDB.open(path, "a") as db:
        for i in range(4):  # robust twins have 2 of 4 first-layer filters dead
            for training, dead in (("robust", 2), ("normal", 0)):
                add_module(db, three_conv_net(i, dead), source="test", name=f"{training}-{i}", input_shape=(1, 8, 8),
                              record={"training": training, "architecture": "cnn", "pair": f"p{i}@0",
                                      "pair_role": training, "seed": i})
        add_module(db, three_conv_net(9), source="test", name="loner", input_shape=(1, 8, 8), record={"training": "normal"})
    result = compare_groups(path, "robust", "normal", layer="first", metrics=["sparsity", "l1_norm"])
    row = result.tests.set_index("metric").loc["sparsity"]
    assert (row["n_a"], row["n_b"], row["n_pairs"]) == (4, 5, 4)  # the loner is in no pair
    assert (row["paired_difference"], row["paired_ci_low"], row["paired_ci_high"]) == (0.5, 0.5, 0.5)
    # 4 equal positive differences: Wilcoxon exact p = 2/16; all 16 sign flips, 2 as extreme
    assert row["paired_p_value"] == pytest.approx(0.125) and row["paired_perm_p"] == pytest.approx(2 / 16)
    assert row["paired_n_permutations"] == 16 and row["paired_test"] == "Wilcoxon signed-rank"
    assert sorted(result.pairs["pair"].unique()) == ["p0@0", "p1@0", "p2@0", "p3@0"]
    l1 = result.pairs[result.pairs["metric"] == "l1_norm"]
    assert (l1["difference"] == l1["value_a"] - l1["value_b"]).all()
    explicit = compare_groups(path, "robust", "normal", layer="first", paired_by="seed", with_divergence=False)
    assert explicit.tests.set_index("metric").loc["sparsity", "n_pairs"] == 4


def test_compare_help_explains_variants_aggregation_and_paired_statistics():
    out = CliRunner().invoke(main, ["compare", "--help"])
    text = " ".join(out.output.split())
    for phrase in ("D = sum_i EVR_i (KL(p_i||q_i) + KL(q_i||p_i))", "database every model of the database",
                   "groups the compared layers", "dataset=cifar10", "pooled the paper's pooling",
                   "w_l = out_channels", "Wilcoxon signed-rank", "d_k = a_k - b_k", "p = (1 + #{T* >= T}) / (1 + N)",
                   "Holm", "--permutations", "--paired", "--aggregate", "--basis", "--kernel"):
        assert phrase in text, phrase


def test_readme_explains_variants_aggregation_and_paired_statistics():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("### Analyse"):readme.index("### Train and evaluate")]
    section += (root / "docs" / "definitions.md").read_text()
    for phrase in ("D = Σ_i EVR_i (KL(p_i‖q_i) + KL(q_i‖p_i))", "`--basis`", "`database` (default; the authors'",
                   "`groups`", "`dataset=cifar10`", "`pooled` (the paper's", "w_l = out_channels",
                   "paired: Wilcoxon", "d_k = a_k - b_k", "p = (1 + #{T* >= T}) / (1 + N)", "Holm's step-down",
                   "fewer than 2 models", "3x3 by default"):
        assert phrase in section, phrase


def test_damaged_or_cut_histogram_cache_is_counted_again(tmp_path, capsys):
    """The per-layer histograms kept in <db>/divergence are checked by their digest: a flipped count
    is named and counted again, a file cut short is counted again; the divergence is unchanged."""
    from filterdb.analysis.basis import HIST_SUFFIX
    path = tmp_path / "db"
    with FilterDB.open(path, "a") as db:
        for i in range(3):
            add(db, f"r{i}", "robust", seed=i)
            add(db, f"n{i}", "normal", seed=10 + i)
    first = compare_groups(path, "robust", "normal", layer="all", metrics=["sparsity"]).divergence
    (hist,) = (path / "divergence").glob(f"*{HIST_SUFFIX}")
    damaged = bytearray(hist.read_bytes())
    damaged[-200] ^= 0x01  # a count of the last layer (the digest, 136 bytes, is the last record)
    hist.write_bytes(bytes(damaged))
    again = compare_groups(path, "robust", "normal", layer="all", metrics=["sparsity"]).divergence
    assert "do not match their checksum" in capsys.readouterr().err
    hist.write_bytes(hist.read_bytes()[:100])
    cut = compare_groups(path, "robust", "normal", layer="all", metrics=["sparsity"]).divergence
    for result in (again, cut):
        assert result["divergence"].tolist() == first["divergence"].tolist()
