"""The database: plain HDF5, self-describing, bit-for-bit filters, stable ids, atomic writes."""
import os

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

from filterdb import open_database, schema
from filterdb.build import add_module
from filterdb.errors import FilterDBError
from filterdb.ids import model_id
from filterdb.schema import LAYER_COLUMN_NAMES, MODEL_COLUMN_NAMES
from filterdb.store import FilterDB


def grouped_net():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, groups=4),
                         nn.Conv2d(32, 32, 5, padding=2, groups=32, dilation=1), nn.Conv2d(32, 8, 1))


ARCHITECTURES = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 64, 64)),  # 7x7 stem, 1x1 shortcuts
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (3, 32, 32)),  # depthwise
    "grouped": (grouped_net, (3, 16, 16)),
}


@pytest.fixture(scope="module")
def zoo_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo") / "db"
    torch.manual_seed(1)
    models = {name: make() for name, (make, _) in ARCHITECTURES.items()}
    with FilterDB.open(path, "a") as db:
        for name, model in models.items():
            add_module(db, model, source="test", name=name, input_shape=ARCHITECTURES[name][1],
                          record={"training": "normal", "architecture": name})
    return path, models


def effective_weights(model):
    return {name: m.weight.detach().numpy() for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_filters_equal_weights_bit_for_bit(zoo_db):
    path, models = zoo_db
    with open_database(path) as db:
        for name, model in models.items():
            weights = effective_weights(model)
            rows = db.layers[db.layers["model_id"] == model_id("test", name)]
            assert len(rows) == len(weights)
            for _, row in rows.iterrows():
                expected = weights[row["name"]].reshape(-1, row["kernel_h"], row["kernel_w"])
                assert db.read_layer(row).tobytes() == expected.tobytes()
                assert db.filters(row["kernel"])[row["start"]:row["stop"]].tobytes() == expected.tobytes()
            assert {k for k in rows["kernel"]} >= ({"7x7", "3x3", "1x1"} if name == "resnet18" else {"3x3"})


def test_plain_h5py_reads_everything(zoo_db):
    path, models = zoo_db
    os.chdir("/")  # virtual datasets resolve shards relative to the master file, not the working directory
    with h5py.File(path / "filterdb.h5", "r") as f:
        assert f.attrs["format"] == "filterdb" and f.attrs["format_version"] == "2.0"
        assert f.attrs["encoding-type"] == "filterdb-database" and f.attrs["encoding-version"] == "2.0"
        assert list(f["models"].attrs["column-order"]) == list(MODEL_COLUMN_NAMES)
        assert list(f["layers"].attrs["column-order"]) == list(LAYER_COLUMN_NAMES)
        for name in MODEL_COLUMN_NAMES:
            assert f["models"][name].attrs["description"]
        layers = {c: f["layers"][c][()] for c in ("model_id", "name", "kernel", "start", "stop")}
        filters = f["filters/3x3"]
        assert filters.dtype == np.float32 and filters.shape[1:] == (3, 3) and filters.is_virtual
        total = sum(int(s) - int(a) for k, a, s in zip(layers["kernel"], layers["start"], layers["stop"]) if k == b"3x3")
        assert filters.shape[0] == total
        weights = effective_weights(models["grouped"])
        for mid, name, kernel, start, stop in zip(*layers.values()):
            if mid.decode() == model_id("test", "grouped") and kernel == b"3x3":
                assert np.array_equal(filters[start:stop], weights[name.decode()].reshape(-1, 3, 3))
        assert not np.isnan(filters[()]).any()


def test_layer_slices_are_contiguous_and_cover_each_kernel(zoo_db):
    path, _ = zoo_db
    with open_database(path) as db:
        for kernel, rows in db.layers.groupby("kernel"):
            starts, stops = rows["start"].to_numpy(), rows["stop"].to_numpy()
            assert starts[0] == 0 and np.array_equal(starts[1:], stops[:-1])
            assert stops[-1] == db.filters(kernel).shape[0]
            assert np.array_equal(stops - starts, rows["n_filters"].to_numpy())


def test_model_table_and_ids(zoo_db):
    path, models = zoo_db
    with open_database(path) as db:
        row = db.models.loc[model_id("test", "resnet18")]
        assert row["key"] == "test:resnet18"
        assert row["n_params"] == sum(p.numel() for p in models["resnet18"].parameters())
        assert row["input_shape"] == "3x64x64" and row["n_members"] == 1 and row["training"] == "normal"
        assert row["tool_version"] and row["extracted_at"].endswith("+00:00")
        assert row["n_filters"] == db.layers[db.layers["model_id"] == row["model_id"]]["n_filters"].sum()


def test_ids_do_not_depend_on_build_order(tmp_path):
    nets = {n: nn.Sequential(nn.Conv2d(1, 2, 3)) for n in "abc"}
    for order, sub in (("abc", "one"), ("cab", "two")):
        with FilterDB.open(tmp_path / sub, "a") as db:
            for n in order:
                add_module(db, nets[n], source="s", name=n, input_shape=(1, 4, 4))
    with open_database(tmp_path / "one") as one, open_database(tmp_path / "two") as two:
        assert list(one.models.index) == [model_id("s", n) for n in "abc"]  # rows in the order models were added
        assert list(two.models.index) == [model_id("s", n) for n in "cab"]
        for n in "abc":
            assert np.array_equal(one.read_model(model_id("s", n)), two.read_model(model_id("s", n)))


def test_readd_replaces_and_remove_deletes(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 2, 3))
    with FilterDB.open(tmp_path / "db", "a") as db:
        add_module(db, net, source="s", name="x", input_shape=(1, 4, 4))
        with torch.no_grad():
            net[0].weight.mul_(2)
        add_module(db, net, source="s", name="x", input_shape=(1, 4, 4))
        add_module(db, nn.Sequential(nn.Conv2d(1, 1, 3)), source="s", name="y", input_shape=(1, 4, 4))
        assert len(db.models) == 2 and db.filters().shape[0] == 3
        assert np.array_equal(db.read_model(model_id("s", "x")), net[0].weight.detach().numpy().reshape(-1, 3, 3))
        db.remove_model(model_id("s", "x"))
        assert list(db.models["name"]) == ["y"] and db.filters().shape[0] == 1


def test_reader_keeps_its_view_while_a_writer_adds(tmp_path):
    with FilterDB.open(tmp_path / "db", "a") as writer:
        add_module(writer, nn.Sequential(nn.Conv2d(1, 2, 3)), source="s", name="a", input_shape=(1, 4, 4))
        reader = open_database(tmp_path / "db")
        add_module(writer, nn.Sequential(nn.Conv2d(1, 2, 3)), source="s", name="b", input_shape=(1, 4, 4))
        assert len(reader.models) == 1 and reader.filters().shape[0] == 2
        reader.close()
    with open_database(tmp_path / "db") as reader:
        assert len(reader.models) == 2


def test_iterators_and_selection(zoo_db):
    path, models = zoo_db
    with open_database(path) as db:
        sel = db.layers[(db.layers["kernel"] == "3x3") & (db.layers["model_id"] == model_id("test", "grouped"))]
        chunks = list(db.iter_filter_chunks("3x3", sel, chunk_rows=100))
        assert max(len(c) for c in chunks) <= 100
        assert np.array_equal(np.concatenate(chunks), db.read_filters(sel))
        rows = [(row["name"], f.shape) for row, f in db.iter_layers(sel)]
        assert rows == [("0", (48, 3, 3)), ("2", (128, 3, 3))]


def test_bad_paths(tmp_path):
    plain = tmp_path / "file.txt"
    plain.write_text("x")
    with pytest.raises(FilterDBError, match="is a file, not a filterdb database directory"):
        FilterDB.open(plain, "a")
    with pytest.raises(FilterDBError, match="cannot write to database directory"):
        FilterDB.open(plain / "db", "a")
    with pytest.raises(FilterDBError, match="is not a filterdb database"):
        open_database(tmp_path)


def test_second_writer_is_refused(tmp_path):
    with FilterDB.open(tmp_path / "db", "a"):
        with pytest.raises(FilterDBError, match="being written by another filterdb process"):
            FilterDB.open(tmp_path / "db", "a")


def test_a_repair_waits_for_the_writer_and_moves_nothing(tmp_path):
    """The repair takes the writer lock (filterdb.lock) before it moves anything aside."""
    from filterdb.cli.database_check import repair_database, verify_database

    with FilterDB.open(tmp_path / "db", "a") as db:
        add_module(db, grouped_net(), source="s", name="a", input_shape=(3, 8, 8))
    stray = tmp_path / "db" / "shards" / "notes.txt"
    stray.write_text("x")
    result = verify_database(tmp_path / "db")
    assert [p.path for p in result.problems] == [stray]
    with FilterDB.open(tmp_path / "db", "a"):
        with pytest.raises(FilterDBError, match=r"db is being written by another filterdb process; repair it once "
                                                r"that ends$"):
            repair_database(result)
    assert stray.read_text() == "x" and not (tmp_path / "db" / "quarantine").exists()
    repair_database(result)
    assert not stray.exists() and len(list((tmp_path / "db" / "quarantine").rglob("notes.txt"))) == 1


def test_in_memory_tables_match_a_fresh_scan(tmp_path):
    with FilterDB.open(tmp_path / "db", "a") as db:
        for n in "ab":
            add_module(db, grouped_net(), source="s", name=n, input_shape=(3, 8, 8), record={"eps": 0.5})
        models, layers = db.models.copy(), db.layers.copy()
    with FilterDB.open(tmp_path / "db", "a") as db:  # tables rebuilt from the shard files
        pd.testing.assert_frame_equal(db.models, models)
        pd.testing.assert_frame_equal(db.layers, layers)
    with open_database(tmp_path / "db") as db:  # tables read from the master file
        pd.testing.assert_frame_equal(db.models, models)
        pd.testing.assert_frame_equal(db.layers, layers)


def test_export_packs_one_self_contained_file(zoo_db, tmp_path):
    path, models = zoo_db
    out = tmp_path / "packed.h5"
    with open_database(path) as db:
        db.export(out)
        layers, kernels = db.layers, db.kernels
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "filterdb" and f.attrs["encoding-type"] == "filterdb-database"
        assert sorted(f["filters"]) == sorted(kernels)
        assert not any(f["filters"][k].is_virtual for k in f["filters"])
        names = f["layers/name"][:].astype(str)
        ids = f["layers/model_id"][:].astype(str)
        for name, model in models.items():
            mid = model_id("test", name)
            for module_name, module in model.named_modules():
                if isinstance(module, nn.Conv2d):
                    row = np.flatnonzero((ids == mid) & (names == module_name))[0]
                    kernel = f["layers/kernel"][row].decode()
                    stored = f["filters"][kernel][f["layers/start"][row]:f["layers/stop"][row]]
                    expected = module.weight.detach().numpy().reshape(stored.shape)
                    assert stored.tobytes() == expected.tobytes()
    assert len(layers) == sum(isinstance(m, nn.Conv2d) for model in models.values() for m in model.modules())
    assert not list(tmp_path.glob(".packed*")), "no temporary file left behind"
    with open_database(path) as db, pytest.raises(FilterDBError, match="is a directory"):
        db.export(tmp_path)


def test_batch_publishes_the_master_on_exit_and_keeps_its_own_tables_current(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 2, 3))
    master = tmp_path / "db" / "filterdb.h5"
    with FilterDB.open(tmp_path / "db", "a") as db:
        add_module(db, net, source="s", name="a", input_shape=(1, 4, 4))
        with db.batch(max_delay=3600):
            stamp = master.stat().st_mtime_ns
            add_module(db, net, source="s", name="b", input_shape=(1, 4, 4))
            add_module(db, net, source="s", name="c", input_shape=(1, 4, 4))
            assert master.stat().st_mtime_ns == stamp  # not rewritten per model
            assert list(db.models["name"]) == ["a", "b", "c"] and db.has_model(model_id("s", "c"))
            assert db.read_model(model_id("s", "c")).tobytes() == net[0].weight.detach().numpy().tobytes()
            with open_database(tmp_path / "db") as reader:  # the last published master, complete
                assert list(reader.models["name"]) == ["a"] and reader.filters().shape[0] == 2
        assert master.stat().st_mtime_ns != stamp
        with h5py.File(master, "r") as f:
            assert sorted(f["models"]["name"].asstr()[()]) == ["a", "b", "c"] and f["filters/3x3"].shape[0] == 6


def test_batch_with_zero_delay_publishes_every_model(tmp_path):
    with FilterDB.open(tmp_path / "db", "a") as db, db.batch(max_delay=0):
        add_module(db, nn.Sequential(nn.Conv2d(1, 2, 3)), source="s", name="a", input_shape=(1, 4, 4))
        with open_database(tmp_path / "db") as reader:
            assert list(reader.models["name"]) == ["a"]


def test_nan_weights_leave_no_shard_behind(tmp_path):
    bad = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3))
    with torch.no_grad():
        bad[1].weight[1, 0, 2, 2] = float("nan")
    with FilterDB.open(tmp_path / "db", "a") as db:
        add_module(db, nn.Sequential(nn.Conv2d(1, 2, 3)), source="s", name="good", input_shape=(1, 6, 6))
        with pytest.raises(FilterDBError, match=r"s:bad, layer 1: 1 weight\(s\) are NaN or Inf"):
            add_module(db, bad, source="s", name="bad", input_shape=(1, 6, 6))
        assert list(db.models["name"]) == ["good"]
    assert sorted(p.name for p in (tmp_path / "db" / "shards").iterdir()) == [f"{model_id('s', 'good')}.h5"]


def write_format_1_master(db_path):
    """Rewrite a database's master in the format 1.0 layout (flat tables, one virtual dataset
    with one source per shard), as filterdb before the index wrote it."""
    from filterdb.h5table import write_table
    from filterdb.shards import root_attrs

    with open_database(db_path) as db:
        models, layers = db.models.copy(), db.layers.copy()
    master = db_path / "filterdb.h5"
    master.unlink()
    with h5py.File(master, "w", libver="latest") as f:
        root_attrs(f, "filterdb-database", "1.0")
        write_table(f, "models", models, schema.MODEL_COLUMNS, index="model_id")
        write_table(f, "layers", layers, schema.LAYER_COLUMNS)
        for kernel, rows in layers.groupby("kernel"):
            kh, kw = map(int, kernel.split("x"))
            layout = h5py.VirtualLayout(shape=(int(rows["stop"].max()), kh, kw), dtype=np.float32)
            for mid, part in rows.groupby("model_id"):
                lo, hi = int(part["start"].min()), int(part["stop"].max())
                layout[lo:hi] = h5py.VirtualSource(f"shards/{mid}.h5", f"filters/{kernel}", shape=(hi - lo, kh, kw))
            f.create_virtual_dataset(f"filters/{kernel}", layout, fillvalue=np.nan)
    return models, layers


def test_format_1_databases_read_and_upgrade_on_first_write(tmp_path):
    nets = {n: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 3, 1)) for n in "ab"}
    with FilterDB.open(tmp_path / "db", "a") as db:
        for n, net in nets.items():
            add_module(db, net, source="s", name=n, input_shape=(1, 4, 4))
    models, layers = write_format_1_master(tmp_path / "db")
    with open_database(tmp_path / "db") as db:
        pd.testing.assert_frame_equal(db.models, models)
        for _, row in db.layers.iterrows():
            weight = nets[db.models.loc[row["model_id"], "name"]][int(row["name"])].weight.detach().numpy()
            assert db.read_layer(row).tobytes() == weight.reshape(db.read_layer(row).shape).tobytes()
            assert db.filters(row["kernel"])[row["start"]:row["stop"]].tobytes() == db.read_layer(row).tobytes()
    with h5py.File(tmp_path / "db" / "filterdb.h5", "r") as f:
        assert f.attrs["encoding-version"] == "1.0"  # reading never rewrote it
    with FilterDB.open(tmp_path / "db", "a") as db:
        pd.testing.assert_frame_equal(db.models, models)
        pd.testing.assert_frame_equal(db.layers, layers)
    with h5py.File(tmp_path / "db" / "filterdb.h5", "r") as f:
        assert f.attrs["encoding-version"] == "2.0" and list(f["shards/model_id"].asstr()[()]) == list(models.index)


def test_index_follows_the_shards(tmp_path):
    """The master's index lists each shard with its size and mtime; a shard changed behind its back
    (here: deleted) is noticed on open and the master rewritten without it."""
    with FilterDB.open(tmp_path / "db", "a") as db:
        for n in "abc":
            add_module(db, nn.Sequential(nn.Conv2d(1, 2, 3)), source="s", name=n, input_shape=(1, 4, 4))
    shards = tmp_path / "db" / "shards"
    with h5py.File(tmp_path / "db" / "filterdb.h5", "r") as f:
        index = {c: f["shards"][c][()] for c in ("model_id", "file", "size", "mtime_ns", "layer_start", "layer_stop")}
        assert [m.decode() for m in index["model_id"]] == [model_id("s", n) for n in "abc"]
        for mid, file, size, mtime in zip(index["model_id"], index["file"], index["size"], index["mtime_ns"]):
            stat = (tmp_path / "db" / file.decode()).stat()
            assert file.decode() == f"shards/{mid.decode()}.h5" and (size, mtime) == (stat.st_size, stat.st_mtime_ns)
        assert list(index["layer_start"]) == [0, 1, 2] and list(index["layer_stop"]) == [1, 2, 3]
        assert f.attrs["clean"] and f.attrs["shards_mtime_ns"] == shards.stat().st_mtime_ns
    (shards / f"{model_id('s', 'b')}.h5").unlink()
    # a shard the index lists that is gone is named, never silently a model less;
    # 'filterdb verify --repair' then rewrites the master without it
    from filterdb.cli.database_check import repair_database, verify_database
    from filterdb.integrity import DamagedDatabaseError

    with pytest.raises(DamagedDatabaseError, match="missing"):
        open_database(tmp_path / "db")
    repair_database(verify_database(tmp_path / "db"))
    with open_database(tmp_path / "db") as db:
        assert list(db.models["name"]) == ["a", "c"] and db.filters().shape[0] == 4
        assert list(db.layers["start"]) == [0, 2]


def recorded_by_the_shards(path) -> np.ndarray:
    """Each master /layers row's filter digest as its shard records it."""
    from filterdb.shards import layer_digests, read_shard_tables

    with h5py.File(path / "filterdb.h5", "r") as f:
        ids, kernels = f["layers/model_id"].asstr()[()], f["layers/kernel"].asstr()[()]
    out = []
    for mid in dict.fromkeys(ids):
        shard = path / "shards" / f"{mid}.h5"
        with h5py.File(shard, "r") as f:
            digests = layer_digests(f, read_shard_tables(shard)[1])
        assert list(kernels[ids == mid]) == list(read_shard_tables(shard)[1]["kernel"])
        out.extend(digests.tolist())
    return np.array(out, np.uint64)


def test_layer_digests_of_the_master_follow_appends_removals_and_rewrites(tmp_path):
    path = tmp_path / "db"
    nets = {n: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 3, 1)) for n in "abc"}
    with FilterDB.open(path, "a") as db:
        for n in "ab":
            add_module(db, nets[n], source="s", name=n, input_shape=(1, 4, 4))
    for step in ("append", "re-extract", "remove"):
        with FilterDB.open(path, "a") as db:
            if step == "append":
                add_module(db, nets["c"], source="s", name="c", input_shape=(1, 4, 4))
            elif step == "re-extract":
                with torch.no_grad():
                    nets["a"][0].weight.mul_(2)
                add_module(db, nets["a"], source="s", name="a", input_shape=(1, 4, 4))
            else:
                db.remove_model(model_id("s", "b"))
        with h5py.File(path / "filterdb.h5", "r") as f:
            recorded = f["layer_digests"][()]
            assert f["layer_digests"].attrs["encoding-type"] == "filterdb-layer-digests"
        assert recorded.all() and np.array_equal(recorded, recorded_by_the_shards(path)), step


@pytest.mark.parametrize("step", ["append", "remove"])
def test_a_master_written_before_layer_digests_gets_them_from_the_shards_on_its_next_write(tmp_path, step):
    path = tmp_path / "db"
    nets = {n: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 3, 1)) for n in "abc"}
    with FilterDB.open(path, "a") as db:
        for n in "ab":
            add_module(db, nets[n], source="s", name=n, input_shape=(1, 4, 4))
    with h5py.File(path / "filterdb.h5", "r+") as f:
        del f["layer_digests"]  # as a master of November 2026 was written
    with FilterDB.open(path, "a") as db:
        if step == "append":
            add_module(db, nets["c"], source="s", name="c", input_shape=(1, 4, 4))
        else:
            db.remove_model(model_id("s", "b"))
    with h5py.File(path / "filterdb.h5", "r") as f:
        recorded = f["layer_digests"][()]
        assert len(recorded) == len(f["layers/model_id"])
    assert recorded.all() and np.array_equal(recorded, recorded_by_the_shards(path))
    with open_database(path) as db:
        db.read_filters(db.layers)
        assert not db._shards  # the fast path: every layer checked against the master's new records


def test_reads_use_the_masters_records_without_opening_a_shard_and_fall_back_when_they_differ(tmp_path):
    path = tmp_path / "db"
    nets = {n: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 3, 1)) for n in "ab"}
    with FilterDB.open(path, "a") as db:
        for n, net in nets.items():
            add_module(db, net, source="s", name=n, input_shape=(1, 4, 4))

    def check_every_layer(db):
        for _, row in db.layers.iterrows():
            weight = nets[db.models.loc[row["model_id"], "name"]][int(row["name"])].weight.detach().numpy()
            assert db.read_layer(row).tobytes() == weight.reshape(db.read_layer(row).shape).tobytes()

    with open_database(path) as db:
        check_every_layer(db)
        assert not db._shards  # every layer verified against the master's records: no shard opened through HDF5
    with h5py.File(path / "filterdb.h5", "r+") as f:
        f["layer_digests"][0] = f["layer_digests"][0] ^ np.uint64(1)  # a wrong record: not trusted, not fatal
    with open_database(path) as db:
        check_every_layer(db)
        assert list(db._shards) == [db.layers["model_id"].iloc[0]]  # that model was read through its shard
