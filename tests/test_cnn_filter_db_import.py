"""`filterdb import cnn-filter-db`: synthetic files in the published layout, written by h5py and pandas itself."""
from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from filterdb.cli import main
from filterdb.errors import FilterDBError
from filterdb.ids import model_id
from filterdb.sources.cnn_filter_db import import_cnn_filter_db, plan_import
from filterdb.sources.pandas_hdf import read_fixed_frame
from filterdb.store import FilterDB, open_database

pytest.importorskip("tables")  # pandas writes the fixtures through PyTables (a dev dependency)

# name, Robust, channels (in, out) per conv layer
MODELS = [
    ("robustbench_Alpha2020_cifar10_linf_13", True, [(3, 8), (8, 8), (8, 16), (16, 16), (16, 16), (16, 8)]),
    ("robustbench_Beta2021_cifar10_linf_13", True, [(3, 8), (8, 8), (8, 16), (16, 16), (16, 8)]),
    ("timm_resnet_a_cifar10_13", False, [(3, 8), (8, 8), (8, 16), (16, 16), (16, 16), (16, 8)]),
    ("timm_resnet_b_cifar10_13", False, [(3, 8), (8, 16), (16, 16), (16, 16), (16, 8)]),
    ("onnx_unknown_13", float("nan"), [(3, 4), (4, 4)]),
]


def write_file(path: Path, *, dtype=np.float64, levels: int = 4, visual_category: bool = True, flat: bool = False,
               chunked: bool = False, models=MODELS, seed: int = 0, edit=None) -> np.ndarray:
    """A CNN-Filter-DB file: /filters by h5py, /meta by ``DataFrame.to_hdf``. Returns the filters written."""
    rows, index, start = [], [], 0
    for number, (name, robust, channels) in enumerate(models):
        for depth, (cin, cout) in enumerate(channels):
            n = cin * cout
            row = {"layer_depth": 3 * depth + 1, "in_channels": cin, "out_channels": cout,
                   "filter_ids": f"{start}:{start + n - 1}", "model": name, "path": f"/models/{name}.onnx",
                   "producer": "pytorch", "op_set": 13, "Conv": len(channels), "depth": len(channels),
                   "total_filters": sum(a * b for a, b in channels), "3x3_filter_share": 1.0,
                   "Name": name.split("_")[1], "Paper": f"Paper of {name}" if robust is True else None,
                   "Robust": robust, "Clean Accuracy": 90.5 - number, "Robust Accuracy": 50.25 if robust is True else np.nan,
                   "Network": "ResNet-18" if number % 2 == 0 else "WideResNet-28-10", "Backbone": "resnet",
                   "Framework": "PyTorch", "Pretraining-Dataset": None, "Training-Dataset": "CIFAR-10",
                   "Precision": "float32", "Conv Weight Initializer": None, "Optimizer": "SGD",
                   "Task": "Image Classification", "Input Shape": "[3, 32, 32]", "Accessible": "yes"}
            if visual_category:
                row["Visual Category"] = "natural"
                row["Visual Category_micro"] = "objects"
            else:
                row["Datatype"] = "natural"
            rows.append(row)
            norm = depth / (len(channels) - 1) if len(channels) > 1 else 0.0
            index.append((number, depth, norm, len(index))[:levels])
            start += n
    meta = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(
        index, names=["model_id", "conv_depth", "conv_depth_norm", "layer_id"][:levels]))
    rng = np.random.default_rng(seed)
    filters = rng.standard_normal((start, 3, 3)).astype(dtype)
    if edit is not None:
        edit(meta, filters)
    with h5py.File(path, "w") as f:
        data = filters.reshape(-1, 9) if flat else filters
        if chunked:  # read through HDF5 (not at a file offset)
            f.create_dataset("filters", data=data, chunks=(100, *data.shape[1:]), compression="gzip")
        else:
            f["filters"] = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTables' performance warning about pickled object columns
        meta.to_hdf(path, key="meta")
    return filters


def import_file(path: Path, db_path: Path, **kwargs):
    with FilterDB.open(db_path, "a") as db:
        return import_cnn_filter_db(path, db, show_progress=False, **kwargs)


CASES = [  # filter dtype, index levels, Visual Category (else the older Datatype), (N, 9) filters, chunked + gzip
    (np.float64, 4, True, False, False),
    (np.float32, 4, False, False, False),
    (np.float64, 3, False, True, False),
    (np.float32, 3, True, True, False),
    (np.float64, 4, True, False, True),
    (np.float32, 3, False, True, True),
]


@pytest.mark.parametrize("dtype,levels,visual_category,flat,chunked", CASES)
def test_filters_are_bit_equal_and_metadata_is_mapped(tmp_path, dtype, levels, visual_category, flat, chunked):
    source = tmp_path / "filters.h5"
    filters = write_file(source, dtype=dtype, levels=levels, visual_category=visual_category, flat=flat,
                         chunked=chunked)
    report = import_file(source, tmp_path / "db", chunk_rows=37)  # chunks cross layer boundaries
    assert report.count("added") == len(MODELS) and not report.failed

    expected32 = filters.astype(np.float32)  # float64 -> float32: round to nearest, numpy's cast
    with open_database(tmp_path / "db") as db:
        assert len(db.models) == len(MODELS) and len(db.layers) == sum(len(m[2]) for m in MODELS)
        start = 0
        for number, (name, robust, channels) in enumerate(MODELS):
            mid = model_id("cnn-filter-db", name)
            row = db.models.loc[mid]
            assert (row["source"], row["name"], row["key"]) == ("cnn-filter-db", name, f"cnn-filter-db:{name}")
            assert row["training"] == {True: "robust", False: "normal"}.get(robust, "")
            assert row["dataset"] == "cifar10" and row["input_shape"] == "3x32x32"
            assert row["architecture"] == ("ResNet-18" if number % 2 == 0 else "WideResNet-28-10")
            assert row["clean_acc"] == 90.5 - number
            assert row["robust_acc"] == 50.25 if robust is True else math.isnan(row["robust_acc"])
            assert row["paper"] == (f"Paper of {name}" if robust is True else "")
            assert row["threat_model"] == ("Linf" if "linf" in name else "")
            assert row["n_layers"] == len(channels) and row["n_filters"] == sum(a * b for a, b in channels)
            published = json.loads(row["published_json"])
            assert published["Task"] == "Image Classification" and published["Optimizer"] == "SGD"
            assert published["Visual Category" if visual_category else "Datatype"] == "natural"
            assert ("Visual Category" in published) == visual_category
            assert published["Robust"] == (None if robust is not True and robust is not False else robust)
            assert published["model_id"] == number and published["Pretraining-Dataset"] is None

            layers = db.layers[db.layers["model_id"] == mid].sort_values("layer_index")
            assert list(layers["conv_depth"]) == list(range(len(channels)))
            assert np.allclose(layers["conv_depth_norm"], np.arange(len(channels)) / max(len(channels) - 1, 1))
            assert list(zip(layers["in_channels"], layers["out_channels"])) == channels
            for (_, layer), (cin, cout) in zip(layers.iterrows(), channels):
                got = db.read_layer(layer)
                assert got.dtype == np.float32 and got.shape == (cin * cout, 3, 3)
                want = expected32[start:start + cin * cout]
                assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # bit for bit
                start += cin * cout
        if dtype == np.float64:  # the cast really rounded (the comparison above is not float64 == float64)
            assert not np.array_equal(db.read_filters(db.layers).astype(np.float64), filters)


def test_restricted_reader_reads_what_pandas_reads(tmp_path):
    source = tmp_path / "filters.h5"
    write_file(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pd.read_hdf(source, "meta")
    got = read_fixed_frame(source, "meta")
    assert got.index.equals(expected.index) and list(got.columns) == list(expected.columns)
    for column in expected.columns:
        a, b = got[column].tolist(), expected[column].tolist()
        assert all(x == y or (pd.isna(x) and pd.isna(y)) for x, y in zip(a, b)), column
        assert all(type(x) is type(y) or pd.isna(x) for x, y in zip(a, b)), column


def test_robust_nan_is_unknown_not_robust(tmp_path):
    source = tmp_path / "filters.h5"
    write_file(source)
    import_file(source, tmp_path / "db")
    with open_database(tmp_path / "db") as db:
        unknown = db.models.loc[model_id("cnn-filter-db", "onnx_unknown_13")]
        assert unknown["training"] == ""
        assert sorted(db.models["training"]) == ["", "normal", "normal", "robust", "robust"]
    # bool(NaN) is True: the authors' .apply(bool) would have called this model robust
    assert bool(float("nan")) is True


class Payload:
    """Unpickling this runs ``exec``, which writes a file: proof of code execution."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (exec, (f"open({str(self.sentinel)!r}, 'w').write('ran')",))


def test_a_pickled_object_is_refused_without_running(tmp_path):
    source, sentinel = tmp_path / "filters.h5", tmp_path / "payload-ran"

    def plant(meta, _filters):
        meta["Optimizer"] = meta["Optimizer"].astype(object)
        meta.iloc[7, meta.columns.get_loc("Optimizer")] = Payload(sentinel)

    write_file(source, edit=plant)
    with pytest.raises(FilterDBError, match=r"column 'Optimizer' .*row 7: refused to unpickle a pickled builtins.exec"):
        plan_import(source)
    result = CliRunner().invoke(main, ["import", "cnn-filter-db", str(source), "--db", str(tmp_path / "db")])
    assert result.exit_code == 1 and "refused to unpickle" in result.output
    assert not sentinel.exists(), "the payload ran"
    assert not (tmp_path / "db").exists()  # refused before the database was created
    with warnings.catch_warnings():  # the payload is live: pandas' own reader runs it
        warnings.simplefilter("ignore")
        pd.read_hdf(source, "meta")
    assert sentinel.read_text() == "ran"


def test_other_non_builtin_values_are_refused_naming_the_column(tmp_path):
    import datetime

    source = tmp_path / "filters.h5"

    def plant(meta, _filters):
        meta["Accessible"] = meta["Accessible"].astype(object)
        meta.iloc[2, meta.columns.get_loc("Accessible")] = datetime.date(2022, 6, 1)

    write_file(source, edit=plant)
    with pytest.raises(FilterDBError, match=r"column 'Accessible' .*row 2: refused to unpickle a pickled datetime.date"):
        plan_import(source)


def _shift_ids(row: int, text: str):
    def edit(meta, _filters):
        meta.iloc[row, meta.columns.get_loc("filter_ids")] = text
    return edit


def _set(row: int, column: str, value):
    def edit(meta, _filters):
        meta.iloc[row, meta.columns.get_loc(column)] = value
    return edit


def _depth_norm(row: int, value: float):
    def edit(meta, _filters):
        index = meta.index.to_frame()
        index.iloc[row, 2] = value
        meta.index = pd.MultiIndex.from_frame(index)
    return edit


# row 1 is the second layer of the first model: its filters are 24:87 (8 * 8)
BAD_ROWS = [
    (_shift_ids(1, "24:86"), r"/meta row 1 \(model_id=0, conv_depth=1.*63 filters in filter_ids '24:86', but "
                             r"in_channels \* out_channels = 8 \* 8 = 64"),
    (_shift_ids(1, "20:83"), r"/meta row 1 .*filter_ids overlap those of /meta row 0"),
    (_shift_ids(1, "24"), r"/meta row 1 .*filter_ids '24' is not 'start:end'"),
    (_shift_ids(1, "99999936:99999999"), r"/meta row 1 .*reach past the end of /filters"),
    (_set(1, "in_channels", 4), r"/meta row 1 .*in_channels \* out_channels = 4 \* 8 = 32"),
    (_depth_norm(2, 0.1), r"/meta row 2 .*conv_depth_norm 0.1 is inconsistent with conv_depth 2"),
]


@pytest.mark.parametrize("edit,message", BAD_ROWS)
def test_bad_rows_fail_their_model_naming_the_row(tmp_path, edit, message):
    source = tmp_path / "filters.h5"
    write_file(source, edit=edit)
    report = import_file(source, tmp_path / "db")
    assert [o.key for o in report.failed] == [f"cnn-filter-db:{MODELS[0][0]}"]
    assert report.failed[0].error.startswith(str(source))
    assert len(report.failed[0].error.splitlines()) == 1
    import re
    assert re.search(message, report.failed[0].error), report.failed[0].error
    assert report.count("added") == len(MODELS) - 1
    with open_database(tmp_path / "db") as db:
        assert model_id("cnn-filter-db", MODELS[0][0]) not in db.models.index
    assert not list((tmp_path / "db" / "shards").glob(".*"))  # nothing half-written


def test_nan_filters_fail_one_model_and_a_rerun_resumes(tmp_path):
    source = tmp_path / "filters.h5"
    filters = write_file(source, edit=lambda meta, filters: filters.__setitem__((150, 1, 1), np.nan))
    db_path = tmp_path / "db"
    report = import_file(source, db_path, chunk_rows=50)
    assert len(report.failed) == 1 and report.count("added") == len(MODELS) - 1
    assert "model 'robustbench_Alpha2020_cifar10_linf_13', layer2: filter 62 of the layer (row 150 of /filters) is NaN" \
        in report.failed[0].error
    assert not list((db_path / "shards").glob(".*"))

    result = CliRunner().invoke(main, ["import", "cnn-filter-db", str(source), "--db", str(db_path)])
    assert result.exit_code == 1 and "0 added, 4 already present, 1 failed" in result.output

    with h5py.File(source, "a") as f:  # the file is repaired: the rerun adds the missing model only
        f["filters"][150] = 0.5
    result = CliRunner().invoke(main, ["import", "cnn-filter-db", str(source), "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert "1 added, 4 already present, 0 failed" in result.output
    with open_database(db_path) as db:
        assert len(db.models) == len(MODELS)
        filters[150] = 0.5
        assert np.array_equal(db.read_filters(db.layers.sort_values(["model_id"], kind="stable")).shape,
                              (len(filters), 3, 3))
        mid = model_id("cnn-filter-db", MODELS[0][0])
        assert np.array_equal(db.read_model(mid), filters[:db.models.loc[mid, "n_filters"]].astype(np.float32))


def test_a_file_in_another_layout_is_a_clear_error(tmp_path):
    source = tmp_path / "filters.h5"
    with h5py.File(source, "w") as f:
        f["filters"] = np.zeros((4, 5, 5))
    with pytest.raises(FilterDBError, match=r"has shape \(4, 5, 5\).*expected \(N, 3, 3\) or \(N, 9\)"):
        plan_import(source)
    with h5py.File(source, "w") as f:
        f["filter"] = np.zeros((4, 3, 3))
    with pytest.raises(FilterDBError, match=r"no /meta table"):
        plan_import(source)


@pytest.fixture(scope="module")
def imported_db(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imported")
    write_file(root / "filters.h5", dtype=np.float32)
    report = import_file(root / "filters.h5", root / "db")
    assert not report.failed
    return root / "db"


def test_compare_runs_on_an_imported_database(imported_db):
    result = CliRunner().invoke(main, ["compare", "robust", "normal", "--layer", "deciles", "--db", str(imported_db),
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = pd.DataFrame(json.loads(result.stdout))
    assert rows["layers"].iloc[0] == "0" and rows["layers"].nunique() > 5  # first layer, then deciles
    first = rows[(rows["layers"] == "0") & rows["n_a"].notna()]
    assert set(first["n_a"]) == {2.0} and set(first["n_b"]) == {2.0}  # the Robust=NaN model is in neither group
    assert {"sparsity", "ve_raw"} <= set(rows["metric"])
    assert rows["divergence"].notna().any()


def test_figures_run_on_an_imported_database(imported_db, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "figures"))
    import make_all

    out = tmp_path / "figures"
    database_figures = ["metrics_by_depth", "divergence_by_depth", "pca_basis", "filter_grids"]
    with pytest.raises(SystemExit, match=r"1 of 5 figures not made: first_stage_activation"):
        make_all.main(["--db", str(imported_db), "--out", str(out), *sum((["--only", n] for n in database_figures), []),
                       "--only", "first_stage_activation"])
    made = sorted(p.name for p in out.iterdir())
    assert made == sorted(f"{n}.{ext}" for n in database_figures for ext in ("pdf", "png"))
    assert all((out / name).stat().st_size > 1000 for name in made)


KILL_SCRIPT = """
import sys
from filterdb.sources.cnn_filter_db import import_cnn_filter_db
from filterdb.store import FilterDB
with FilterDB.open(sys.argv[2], "a") as db:
    print("ready", flush=True)
    report = import_cnn_filter_db(sys.argv[1], db, chunk_rows=4096, show_progress=False)
print(report.count("added"), "added", flush=True)
"""


@pytest.mark.slow
def test_sigkill_mid_import_loses_only_the_model_in_flight_and_a_rerun_resumes(tmp_path):
    import signal
    import subprocess
    import time

    big = [(f"timm_big{i}_cifar10_13", i % 2 == 0, [(3, 64), (64, 256), (256, 256)]) for i in range(8)]
    source, db_path = tmp_path / "filters.h5", tmp_path / "db"
    filters = write_file(source, models=big)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(source), str(db_path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "ready\n"
    deadline = time.monotonic() + 120
    while not list((db_path / "shards").glob("*.h5")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # as soon as the first model is complete: the second is in flight
    proc.wait()

    def check_intact() -> int:
        with open_database(db_path) as db:
            offsets = np.cumsum([0] + [sum(a * b for a, b in m[2]) for m in big])
            for number, (name, _, _) in enumerate(big):
                mid = model_id("cnn-filter-db", name)
                if mid in db.models.index:
                    want = filters[offsets[number]:offsets[number + 1]].astype(np.float32)
                    assert np.array_equal(db.read_model(mid).view(np.uint32), want.view(np.uint32))
            return len(db.models)

    present = check_intact()
    assert 1 <= present < len(big)
    assert not list((db_path / "shards").glob(".*"))  # the model in flight left nothing
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(source), str(db_path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"{len(big) - present} added"
    assert check_intact() == len(big)


def test_without_direct_io_the_import_is_the_same(tmp_path, monkeypatch):
    """Where the file system refuses O_DIRECT every byte goes through the page cache instead."""
    from filterdb.sources import direct_io

    source = tmp_path / "filters.h5"
    filters = write_file(source)
    monkeypatch.setattr(direct_io, "_DIRECT", 0)
    import_file(source, tmp_path / "db", chunk_rows=1000)
    with open_database(tmp_path / "db") as db:
        got = np.concatenate([db.read_model(model_id("cnn-filter-db", m[0])) for m in MODELS])
    assert np.array_equal(got.view(np.uint32), filters.astype(np.float32).view(np.uint32))
