"""The CLI end to end: build, add, info, demo; bad input gives one clear line and changes nothing."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from filterdb import open_database
from filterdb.build import add_module
from filterdb.cli import main
from filterdb.training import create_model
from filterdb.training.checkpoint import load_checkpoint, wrap_state_dict


def run(*args, **env):
    result = CliRunner().invoke(main, [str(a) for a in args], env=env or None)
    return result


def snapshot(db_path):
    """Every file of a database with its size: what 'nothing half-written' is checked against."""
    return sorted((p.relative_to(db_path).as_posix(), p.stat().st_size) for p in db_path.rglob("*")
                  if p.is_file() and p.name != ".lock") if db_path.exists() else []


def test_demo_build_is_cached_and_info_reports_it(demo_home, monkeypatch, tmp_path):
    from filterdb.training.demo import DEMO_PAIRS

    monkeypatch.setenv("FILTERDB_HOME", str(demo_home))
    db = tmp_path / "db"
    n = 2 * len(DEMO_PAIRS)
    checkpoints = sorted((demo_home / "demo-checkpoints").rglob("*.pt"))
    mtimes = [p.stat().st_mtime_ns for p in checkpoints]
    result = run("build", "--leaderboard", "demo", "--db", db)
    assert result.exit_code == 0, result.output
    assert f"{n} added, 0 already present, 0 failed" in result.output
    assert [p.stat().st_mtime_ns for p in checkpoints] == mtimes and len(checkpoints) == n  # cached: nothing retrained
    again = run("build", "--leaderboard", "demo", "--db", db)
    assert again.exit_code == 0 and f"0 added, {n} already present, 0 failed" in again.output

    info = run("info", "--db", db, "--json")
    assert info.exit_code == 0, info.output
    summary = json.loads(info.output)
    with open_database(db) as opened:
        assert summary["models"] == n == len(opened.models)
        assert summary["layers"] == len(opened.layers)
        assert summary["filters_per_kernel"] == {k: int(v) for k, v in
                                                 opened.layers.groupby("kernel")["n_filters"].sum().items()}
        robust = opened.models[opened.models["training"] == "robust"]
        normal = opened.models[opened.models["training"] == "normal"]
        assert len(robust) == len(normal) == len(DEMO_PAIRS)
        assert (robust.sort_values("name")["robust_acc"].to_numpy() > normal.sort_values("name")["robust_acc"].to_numpy()).all()
        assert set(opened.models["robust_attack"]) == {"pgd-10"}
    table = run("info", "--db", db)
    assert table.exit_code == 0 and "digits/cnn4-16-s0/pgd" in table.output and "3x3" in table.output


def test_demo_pairs_share_initial_weights_and_data_order(demo_home):
    from filterdb.training.demo import DEMO_PAIRS
    from filterdb.training.pair_training import check_pair

    for pair in DEMO_PAIRS:
        out = demo_home / "demo-checkpoints" / pair.name
        check_pair(out / "normal" / "last.pt", out / "pgd" / "last.pt")  # raises unless matched


@pytest.fixture
def good_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("cnn4-16", num_classes=10, in_chans=1)
    path = wrap_state_dict(model.state_dict(), tmp_path / "good" / "model.pt", "cnn4-16", "digits", 10, (1, 8, 8),
                           metrics={"clean_acc": 90.0})
    return path, model


def test_add_checkpoint_bit_for_bit(tmp_path, good_checkpoint):
    path, model = good_checkpoint
    db = tmp_path / "db"
    result = run("add", path, "--db", db)
    assert result.exit_code == 0, result.output
    with open_database(db) as opened:
        (mid, row), = opened.models.iterrows()
        assert (row["source"], row["model_string"], row["dataset"], row["training"]) == (
            "checkpoint", "cnn4-16", "digits", "normal")
        assert row["clean_acc"] == 90.0 and len(row["weights_sha256"]) == 64
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        for (_, layer), conv in zip(opened.layers.iterrows(), convs):
            assert opened.read_layer(layer).tobytes() == conv.weight.detach().numpy().reshape(-1, 3, 3).tobytes()
    assert "0 added, 1 already present" in run("add", path, "--db", db).output


def bad_checkpoints(tmp_path, good):
    good_path, _ = good
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good_path.read_bytes()[:5000])
    other = create_model("resnet8-8", num_classes=10, in_chans=1)
    wrong_arch = wrap_state_dict(other.state_dict(), tmp_path / "wrong_arch.pt", "cnn4-16", "digits", 10, (1, 8, 8))
    payload = load_checkpoint(good_path).payload
    payload["model_state"] = {k: v.clone() for k, v in payload["model_state"].items()}
    next(v for k, v in payload["model_state"].items() if k.endswith("weight") and v.dim() == 4)[0, 0, 0, 0] = np.nan
    nan_weights = tmp_path / "nan_weights.pt"
    torch.save(payload, nan_weights)
    bare = tmp_path / "bare_state_dict.pt"
    torch.save(other.state_dict(), bare)
    return {
        text: "not a PyTorch checkpoint",
        truncated: "truncated or corrupt",
        wrong_arch: "do not fit the architecture",
        nan_weights: "NaN or Inf",
        bare: "bare state dict without a model string",
    }


def test_bad_checkpoints_one_line_each_and_nothing_written(tmp_path, good_checkpoint):
    db = tmp_path / "db"
    assert run("add", good_checkpoint[0], "--db", db).exit_code == 0
    before = snapshot(db)
    for path, message in bad_checkpoints(tmp_path, good_checkpoint).items():
        result = run("add", path, "--db", db)
        assert result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(path) in errors[0] and message in errors[0], result.output
        assert snapshot(db) == before


def test_build_from_checkpoint_dir_goes_on_past_failures(tmp_path, good_checkpoint):
    bad_checkpoints(tmp_path, good_checkpoint)  # five bad files beside the good one's folder
    db = tmp_path / "db"
    result = run("build", "--checkpoints", tmp_path, "--db", db)
    assert result.exit_code == 1
    assert "1 added, 0 already present, 5 failed" in result.output
    with open_database(db) as opened:
        assert list(opened.models["model_string"]) == ["cnn4-16"]


def test_bad_database_paths(tmp_path, good_checkpoint):
    plain = tmp_path / "plain"
    plain.write_text("x")
    for db, message in ((plain, "is a file, not a filterdb database directory"),
                        (plain / "sub", "cannot write to database directory")):
        result = run("add", good_checkpoint[0], "--db", db)
        assert result.exit_code == 1
        assert result.output.strip().splitlines()[-1].startswith("error:") and message in result.output
    result = run("info", "--db", tmp_path / "missing")
    assert result.exit_code == 1 and "is not a filterdb database" in result.output


def test_model_without_convolutions_leaves_nothing(tmp_path):
    from filterdb.errors import FilterDBError
    from filterdb.store import FilterDB

    with FilterDB.open(tmp_path / "db", "a") as db:
        with pytest.raises(FilterDBError, match="test:mlp: the model has no Conv2d layers"):
            add_module(db, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), source="test", name="mlp",
                          input_shape=(1, 2, 2))
    assert [p.name for p in (tmp_path / "db" / "shards").iterdir()] == []


def test_compare_on_the_demo_database_reports_differences_and_statistics(demo_db):
    from filterdb.analysis.metrics import METRIC_NAMES
    from filterdb.training.demo import DEMO_PAIRS

    first = run("compare", "robust", "normal", "--layer", "first", "--db", demo_db, "--format", "json")
    assert first.exit_code == 0, first.output
    records = json.loads(first.output[first.output.index("["):])
    rows = [r for r in records if r["metric"] != "divergence"]
    divergence = [r for r in records if r["metric"] == "divergence"]
    assert {r["metric"] for r in rows} == set(METRIC_NAMES)
    assert len(divergence) == 1 and divergence[0]["divergence"] > 0 and divergence[0]["filters_a"] > 0
    for r in rows:
        assert r["layers"] == "first" and r["n_a"] == r["n_b"] == len(DEMO_PAIRS)  # one robust, one normal per pair
        assert r["difference"] == pytest.approx(r["mean_a"] - r["mean_b"], abs=1e-12)
        assert 0 <= r["p_value"] <= 1 and -1 <= r["cliffs_delta"] <= 1
        assert r["ci_low"] <= r["difference"] <= r["ci_high"]

    deciles = run("compare", "robust", "normal", "--layer", "deciles", "--db", demo_db, "--format", "csv")
    assert deciles.exit_code == 0, deciles.output
    import io

    import pandas as pd
    frame = pd.read_csv(io.StringIO(deciles.output[deciles.output.index("layers,"):]), dtype={"layers": str})
    assert frame["layers"].iloc[0] == "0"  # the first layer on its own, then deciles of conv_depth_norm
    metrics = frame[frame["metric"] != "divergence"]
    assert len(set(frame["layers"])) > 3 and set(metrics["metric"]) == set(METRIC_NAMES)
    tested = metrics["note"].fillna("") == ""  # a decile with fewer than 2 models a group gets no p-value
    assert metrics.loc[tested, "p_value"].between(0, 1).all() and metrics.loc[~tested, "p_value"].isna().all()

    table = run("compare", "robust", "normal", "--layer", "deciles", "--db", demo_db)
    assert table.exit_code == 0 and "Cliff" in table.output and "p (MWU)" in table.output
