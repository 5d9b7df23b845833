"""`filterdb build --leaderboard linf-cifar10 --offline` on random-weight checkpoints at robustbench's own paths.

The checkpoints are built by the zoo's own constructors and loaded back through
robustbench's ``load_model``; the database must hold exactly their weights.
"""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from filterdb.cli import main
from filterdb.ids import model_id
from filterdb.integrity import sha256_file
from filterdb.sources.robustbench import ensemble_members, weight_files, zoo_entry
from filterdb.store import open_database

EPS_8 = 8 / 255
# zoo name -> what the build must find: 'Standard' WRN-28-10, a PreActResNet-18, a WideResNet with SiLU, an ensemble
MODELS = {
    "Standard": dict(architecture="WideResNet-28-10", training="normal", clean_acc=94.78, robust_acc=0.0,
                     extra_data=False, n_members=1, paper="Standardly trained model"),
    "Wong2020Fast": dict(architecture="PreActResNet-18", training="robust", clean_acc=83.34, robust_acc=43.21,
                         extra_data=False, n_members=1, venue="ICLR 2020",
                         paper="Fast is better than free: Revisiting adversarial training"),
    "Gowal2020Uncovering_28_10_extra": dict(architecture="WideResNet-28-10", training="robust", clean_acc=89.48,
                                            robust_acc=62.80, extra_data=True, n_members=1, venue="arXiv, Oct 2020"),
    "Chen2020Adversarial": dict(architecture="ResNet-50", training="robust", clean_acc=86.04, robust_acc=51.56,
                                extra_data=False, n_members=3, venue="CVPR 2020"),
}


def build_network(dataset: str, threat: str, name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return zoo_entry(dataset, threat, name)["model"]()


def write_checkpoint(model_dir: Path, name: str, seed: int, dataset="cifar10", threat="Linf") -> list[Path]:
    """Random weights from the zoo's constructor, saved where robustbench's load_model looks for them."""
    entry = zoo_entry(dataset, threat, name)
    model = build_network(dataset, threat, name, seed)
    ensemble = isinstance(entry["gdrive_id"], list)
    members = ensemble_members(model) if ensemble else [model]
    files = weight_files(model_dir, dataset, threat, name, len(members))
    for member, path in zip(members, files):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(member.state_dict(), path)
    return files


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_filters_equal_checkpoint(db, name: str, files: list[Path], dataset="cifar10", threat="Linf") -> None:
    """Every stored filter equals, bit for bit, the weight in the checkpoint file of its member."""
    mid = model_id("robustbench", f"{dataset}/{threat}/{name}")
    states = [torch.load(path, map_location="cpu") for path in files]
    rows = db.layers[db.layers["model_id"] == mid]
    assert len(rows) > 0
    for _, row in rows.iterrows():
        weight = states[int(row["member"])][f"{row['name']}.weight"]
        expected = weight.numpy().reshape(-1, int(row["kernel_h"]), int(row["kernel_w"]))
        assert db.read_layer(row).tobytes() == expected.tobytes(), row["name"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("robustbench-models")
    files = {name: write_checkpoint(model_dir, name, seed) for seed, name in enumerate(MODELS)}
    return model_dir, files


@pytest.fixture(scope="module")
def built(zoo, tmp_path_factory):
    model_dir, files = zoo
    db = tmp_path_factory.mktemp("rb") / "db"
    models = [arg for name in MODELS for arg in ("--models", name)]
    result = run_cli("build", "--leaderboard", "linf-cifar10", *models, "--offline",
                     "--model-dir", str(model_dir), "--db", str(db))
    assert result.exit_code == 0, result.output
    return db, files


def test_filter_counts_equal_the_constructors(built):
    db_path, _ = built
    with open_database(db_path) as db:
        for seed, name in enumerate(MODELS):
            network = build_network("cifar10", "Linf", name, seed)
            expected: dict[str, int] = {}
            for module in network.modules():
                if isinstance(module, torch.nn.Conv2d):
                    kh, kw = module.kernel_size
                    expected[f"{kh}x{kw}"] = expected.get(f"{kh}x{kw}", 0) + module.weight.numel() // (kh * kw)
            rows = db.layers[db.layers["model_id"] == model_id("robustbench", f"cifar10/Linf/{name}")]
            assert rows.groupby("kernel")["n_filters"].sum().to_dict() == expected, name
        standard = db.layers[db.layers["model_id"] == model_id("robustbench", "cifar10/Linf/Standard")]
        assert standard[standard["kernel"] == "3x3"]["n_filters"].sum() == 4_021_808


def test_filters_equal_the_weights_bit_for_bit(built):
    db_path, files = built
    with open_database(db_path) as db:
        for name in MODELS:
            assert_filters_equal_checkpoint(db, name, files[name])
    with h5py.File(db_path / "filterdb.h5", "r") as f:  # the master's virtual dataset shows the same rows
        assert f["filters/3x3"].shape[0] == sum(
            int(n) for n, k in zip(f["layers/n_filters"][()], f["layers/kernel"].asstr()[()]) if k == "3x3")


def test_metadata_of_each_model(built):
    db_path, files = built
    with open_database(db_path) as db:
        models = db.models.set_index("name")
        for name, facts in MODELS.items():
            row = models.loc[f"cifar10/Linf/{name}"]
            for column, value in facts.items():
                assert row[column] == pytest.approx(value) if isinstance(value, float) else row[column] == value, \
                    (name, column)
            assert row["source"] == "robustbench" and row["dataset"] == "cifar10" and row["threat_model"] == "Linf"
            assert row["eps"] == pytest.approx(EPS_8)
            assert row["robust_attack"] == "autoattack"
            assert row["input_shape"] == "3x32x32"
            assert row["weights_sha256"] == ",".join(sha256_file(p) for p in files[name])
            assert row["paper_url"].startswith("http")
        assert models.loc["cifar10/Linf/Standard", "training_method"] == "standard"
        chen = db.layers[db.layers["model_id"] == model_id("robustbench", "cifar10/Linf/Chen2020Adversarial")]
        assert sorted(chen["member"].unique()) == [0, 1, 2]
        assert (chen.groupby("member")["conv_depth_norm"].max() == 1.0).all()


def test_rerun_skips_completed_models_without_extracting_them_again(built, zoo):
    db_path, _ = built
    model_dir, _ = zoo
    models = [arg for name in MODELS for arg in ("--models", name)]
    shards = {p.name: p.stat().st_mtime_ns for p in (db_path / "shards").glob("*.h5")}
    master = (db_path / "filterdb.h5").stat().st_mtime_ns
    result = run_cli("build", "--leaderboard", "linf-cifar10", *models, "--offline",
                     "--model-dir", str(model_dir), "--db", str(db_path))
    assert result.exit_code == 0, result.output
    assert f"0 added, {len(MODELS)} already present, 0 failed" in result.output
    # nothing was extracted or published again: no shard and not the master rewritten
    assert {p.name: p.stat().st_mtime_ns for p in (db_path / "shards").glob("*.h5")} == shards
    assert (db_path / "filterdb.h5").stat().st_mtime_ns == master


def test_pairs_matches_robust_and_normal_models_of_one_architecture(built):
    db_path, _ = built
    result = run_cli("pairs", "--db", str(db_path), "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = {line.split(",")[0]: line.split(",") for line in result.output.splitlines()[1:]}
    assert rows["robustbench:cifar10/Linf/Gowal2020Uncovering_28_10_extra"][2:4] == \
        ["WideResNet-28-10", "robustbench:cifar10/Linf/Standard"]
    assert rows["robustbench:cifar10/Linf/Wong2020Fast"][3] == ""  # no normal PreActResNet-18 anywhere yet
    assert "robustbench:cifar10/Linf/Standard" not in rows  # normal models are not rows


def test_failures_are_reported_per_model_and_the_rest_lands(zoo, tmp_path):
    model_dir, _ = zoo
    corrupt = weight_files(model_dir, "cifar10", "Linf", "Sehwag2021Proxy_R18", 1)[0]
    corrupt.write_bytes(b"<!DOCTYPE html><html>Google Drive - Virus scan warning</html>")
    db = tmp_path / "db"
    result = run_cli("build", "-l", "linf-cifar10", "-m", "Wong2020Fast", "-m", "Rebuffi2021Fixing_R18_ddpm",
                     "-m", "Sehwag2021Proxy_R18", "-m", "Debenedetti2022Light_XCiT-S12", "--offline",
                     "--model-dir", str(model_dir), "--db", str(db))
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "1 added, 0 already present, 3 failed" in out
    missing = weight_files(model_dir, "cifar10", "Linf", "Rebuffi2021Fixing_R18_ddpm", 1)[0]
    assert "Rebuffi2021Fixing_R18_ddpm" in out and "is missing and --offline forbids" in out
    assert str(missing.name) in out
    assert not missing.exists()  # nothing tried to download it
    assert "robustbench could not load the model" in out
    assert "Sehwag2021Proxy_R18.pt is a web page from a failed download: delete it and rerun" in out
    assert "cannot be built with --offline" in out
    with open_database(db) as opened:
        assert list(opened.models["name"]) == ["cifar10/Linf/Wong2020Fast"]


def test_no_keep_weights_deletes_the_file_once_stored(tmp_path):
    files = write_checkpoint(tmp_path / "models", "Addepalli2021Towards_RN18", seed=7)
    saved = torch.load(files[0], map_location="cpu")
    result = run_cli("build", "-l", "linf-cifar10", "-m", "Addepalli2021Towards_RN18", "--offline",
                     "--no-keep-weights", "--model-dir", str(tmp_path / "models"), "--db", str(tmp_path / "db"))
    assert result.exit_code == 0, result.output
    assert not files[0].exists()
    with open_database(tmp_path / "db") as db:
        row = db.layers[db.layers["model_id"] == model_id("robustbench", "cifar10/Linf/Addepalli2021Towards_RN18")]
        first = row.iloc[0]
        assert np.array_equal(db.read_layer(first), saved[f"{first['name']}.weight"].numpy().reshape(-1, 3, 3))


def test_leaderboards_command_lists_boards_with_counts():
    result = run_cli("leaderboards", "--format", "csv")
    assert result.exit_code == 0, result.output
    lines = {line.split(",")[0]: line for line in result.output.splitlines()}
    for board, count in [("linf-cifar10", 76), ("linf-cifar100", 38), ("linf-imagenet", 30), ("l2-cifar10", 21)]:
        assert lines[board].split(",")[1] == str(count)
    assert "corruptions-cifar10" in lines
    listing = run_cli("leaderboards", "linf-cifar10", "--format", "csv")
    assert "Chen2020Adversarial,ResNet-50" in listing.output


REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "robustbench_model_info"


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="RobustBench's published model_info is not next to the repo")
def test_committed_table_is_what_the_refresh_script_derives(tmp_path):
    import subprocess
    import sys

    from filterdb.sources.robustbench import TABLE

    script = Path(__file__).resolve().parents[1] / "filterdb" / "data" / "refresh_robustbench.py"
    done = subprocess.run([sys.executable, str(script), "--model-info", str(REFERENCE), "--out",
                           str(tmp_path / "table.csv")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "table.csv").read_text() == TABLE.read_text()


def test_add_takes_a_robustbench_id_and_stores_its_published_weights(tmp_path, monkeypatch):
    files = write_checkpoint(tmp_path / "models", "Wong2020Fast", seed=3)
    monkeypatch.setenv("FILTERDB_MODEL_DIR", str(tmp_path / "models"))
    result = run_cli("add", "robustbench:CIFAR10/linf/Wong2020Fast", "--offline", "--db", str(tmp_path / "db"))
    assert result.exit_code == 0, result.output
    with open_database(tmp_path / "db") as db:
        assert_filters_equal_checkpoint(db, "Wong2020Fast", files)
        model = db.models.iloc[0]
        assert (model["source"], model["name"], model["training"], model["architecture"]) == \
            ("robustbench", "cifar10/Linf/Wong2020Fast", "robust", "PreActResNet-18")


@pytest.mark.parametrize("argument, message", [
    ("robustbench:cifar10/Linf/NoSuchModel", "not in RobustBench's model table; 'filterdb leaderboards linf-cifar10'"),
    ("robustbench:Standard", "expected robustbench:<dataset>/<threat model>/<name>"),
])
def test_add_names_a_bad_robustbench_id(tmp_path, argument, message):
    result = CliRunner().invoke(main, ["add", argument, "--offline", "--db", str(tmp_path / "db")])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "db").exists()
