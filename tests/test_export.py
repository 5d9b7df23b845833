"""`filterdb export`: a single-file database that every read-only command and the figures open."""
import json
import os
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest
from cli_results import one_error_line, run
from tiny_nets import three_conv_net

from filterdb import open_database
from filterdb.analysis.compare import compare_groups
from filterdb.analysis.metrics_table import database_metrics
from filterdb.build import add_module
from filterdb.errors import FilterDBError
from filterdb.ids import model_id
from filterdb.packed import PackedDB
from filterdb.store import FilterDB

FIGURES = Path(__file__).resolve().parent.parent / "figures"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """3 robust (half the first layer dead) and 3 normal models, and the modules themselves."""
    path = tmp_path_factory.mktemp("export") / "db"
    modules = {}
    with FilterDB.open(path, "a") as db:
        for i in range(3):
            for training, seed, dead in (("robust", i, 2), ("normal", 10 + i, 0)):
                name = f"{training}-{i}"
                modules[name] = three_conv_net(seed, dead)
                add_module(db, modules[name], source="test", name=name, input_shape=(1, 8, 8),
                              record={"training": training, "dataset": "digits", "architecture": "cnn", "seed": i})
    return path, modules


def test_round_trip_gives_the_same_comparison_and_metrics(source, tmp_path, isolated_home):
    path, _ = source
    out = tmp_path / "filters.h5"
    result = run("export", out, "--db", path)
    assert result.exit_code == 0, result.output
    with open_database(out) as packed, open_database(path) as db:
        assert isinstance(packed, PackedDB)
        pd.testing.assert_frame_equal(packed.models, db.models)
        pd.testing.assert_frame_equal(packed.layers.drop(columns=["start", "stop"]),
                                      db.layers.drop(columns=["start", "stop"]))
        for (_, a), (_, b) in zip(packed.layers.iterrows(), db.layers.iterrows()):
            assert packed.read_layer(a).tobytes() == db.read_layer(b).tobytes()
        assert packed.cache_dir.parent == isolated_home / "cache"
    for layer in ("first", "all"):
        ours = compare_groups(out, "robust", "normal", layer, kernel="all", permutations=199).to_frame()
        theirs = compare_groups(path, "robust", "normal", layer, kernel="all", permutations=199).to_frame()
        pd.testing.assert_frame_equal(ours, theirs)
        assert ours.loc[ours["metric"] == "sparsity", "difference"].notna().all()
    pd.testing.assert_frame_equal(database_metrics(out), database_metrics(path))
    cli = [run("compare", "robust", "normal", "--layer", "all", "--format", "csv", "--permutations", "99", "--db", p)
           for p in (out, path)]
    assert cli[0].exit_code == 0 and cli[0].stdout == cli[1].stdout
    assert list((isolated_home / "cache").glob("*/metrics/*.json")), "the file's metrics cache is in FILTERDB_HOME"
    info = run("info", "--db", out, "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["models"] == 6
    assert json.loads(info.stdout)["size_on_disk_bytes"] == out.stat().st_size
    metrics = run("metrics", "--db", out, "--format", "json")
    assert metrics.exit_code == 0 and len(json.loads(metrics.stdout)) == 6 * 3  # 3x3 layers by default


def test_figures_read_an_export(source, tmp_path):
    path, _ = source
    out = tmp_path / "filters.h5"
    with open_database(path) as db:
        db.export(out)
    sys.path.insert(0, str(FIGURES))
    try:
        import filter_grids
        written = filter_grids.main(["--db", str(out), "--out", str(tmp_path / "fig")])
    finally:
        sys.path.remove(str(FIGURES))
    assert written and all(p.stat().st_size > 1000 for p in written)


def test_overwrite_is_refused_without_force(source, tmp_path):
    path, _ = source
    out = tmp_path / "filters.h5"
    out.write_bytes(b"keep me")
    one_error_line(run("export", out, "--db", path), out, "--force")
    assert out.read_bytes() == b"keep me"
    with open_database(path) as db, pytest.raises(FilterDBError, match="--force"):
        db.export(out)
    assert run("export", out, "--db", path, "--force").exit_code == 0
    with open_database(out) as packed:
        assert len(packed.models) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["filters.h5"], "no temporary file left"


def test_subset_holds_exactly_the_selected_models_bit_for_bit(source, tmp_path):
    path, modules = source
    out = tmp_path / "subset.h5"
    result = run("export", out, "--db", path, "--select", "robust,name=robust-[01]", "--layer", "first")
    assert result.exit_code == 0, result.output
    with open_database(out) as packed:
        assert sorted(packed.models["name"]) == ["robust-0", "robust-1"]
        assert list(packed.models["n_layers"]) == [1, 1] and list(packed.models["n_filters"]) == [4, 4]
        assert list(packed.layers["name"]) == ["0", "0"]
        for _, row in packed.layers.iterrows():
            name = packed.models.loc[row["model_id"], "name"]
            expected = modules[name][0].weight.detach().numpy().reshape(-1, 3, 3)
            assert packed.read_layer(row).tobytes() == expected.tobytes()
        with h5py.File(out, "r") as f:
            assert f["filters/3x3"].shape == (8, 3, 3) and "1x1" not in f["filters"]
            assert f.attrs["selection"] == "robust,name=robust-[01]" and f.attrs["layer_selector"] == "first"
    again = tmp_path / "again.h5"  # an export exports again: a subset of a subset, by kernel
    assert run("export", again, "--db", out, "--select", "*-1").exit_code == 0
    with open_database(again) as packed:
        assert list(packed.models.index) == [model_id("test", "robust-1")]
    one_error_line(run("export", tmp_path / "x.h5", "--db", path, "--select", "dataset=cifar10"), "cifar10")
    one_error_line(run("export", tmp_path / "x.h5", "--db", path, "--kernel", "5x5"), "5x5")
    assert not (tmp_path / "x.h5").exists()
    with open_database(path) as db, pytest.raises(FilterDBError, match="no model 'nope'"):
        db.export(tmp_path / "y.h5", ["nope"])
    assert not (tmp_path / "y.h5").exists()


def test_damaged_or_foreign_files_are_one_line_errors(source, tmp_path):
    path, _ = source
    out = tmp_path / "filters.h5"
    with open_database(path) as db:
        db.export(out)
    with h5py.File(out, "r") as f:
        offset = f["filters/3x3"].id.get_chunk_info(0).byte_offset  # chunked since export format 1.1
    with open(out, "r+b") as fh:
        fh.seek(offset + 8)
        byte = fh.read(1)
        fh.seek(offset + 8)
        fh.write(bytes([byte[0] ^ 0xFF]))
    one_error_line(run("metrics", "--db", out), out, "robust-0", "checksum")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    one_error_line(run("info", "--db", junk), junk, "filterdb export")
    one_error_line(run("info", "--db", path / "filterdb.h5"), "master file", path)
    one_error_line(run("add", "timm:x", "--db", out), out, "read only")
    with pytest.raises(FilterDBError, match="read only"):
        FilterDB.open(out, "a")
    assert os.path.getsize(out) > 0


def test_verify_checks_an_export(source, tmp_path):
    path, _ = source
    out = tmp_path / "filters.h5"
    with open_database(path) as db:
        db.export(out)
    good = run("verify", "--db", out)
    assert good.exit_code == 0 and "export whole, 6 model(s), 24 layer(s)" in good.output
    with h5py.File(out, "r") as f:
        offset = f["filters/1x1"].id.get_chunk_info(0).byte_offset
    with open(out, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x7f\x7f\x7f\x7f")
    one_error_line(run("verify", "--db", out), out, "checksum")
    one_error_line(run("verify", "--db", out, "--repair"), "export it again")
