"""Format versions: one form (MAJOR.MINOR), older versions read, newer ones refused with one line."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from filterdb.build import add_module
from filterdb.errors import FilterDBError
from filterdb.h5table import (
    FIXED_STRING_BYTES,
    TABLE_ENCODING,
    TABLE_ENCODING_VERSION,
    append_rows,
    read_table,
    write_table,
)
from filterdb.schema import Column
from filterdb.store import FilterDB, open_database
from filterdb.versions import check_readable, parse_version


def test_versions_in_one_form():
    assert parse_version("2.0") == (2, 0) and parse_version(1) == (1, 0) and parse_version("0.2.0") == (0, 2)
    assert check_readable("1.0", "2.0", "x") == (1, 0)
    assert check_readable(1, "1.0", "x") == (1, 0)  # the integer of older checkpoints and evaluation files
    with pytest.raises(FilterDBError, match=r"^db/filterdb.h5: database format version 3.1 is newer than this "
                                            r"filterdb reads \(2.0\); upgrade filterdb"):
        check_readable("3.1", "2.0", "db/filterdb.h5: database format")
    with pytest.raises(FilterDBError, match="not a version"):
        check_readable("two", "2.0", "x")


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "db"
    with FilterDB.open(path, "a") as db:
        torch.manual_seed(0)
        add_module(db, nn.Sequential(nn.Conv2d(1, 2, 3)), source="test", name="a", input_shape=(1, 6, 6))
    return path


def test_tables_say_their_own_encoding_and_old_ones_still_read(db_path):
    with h5py.File(db_path / "filterdb.h5", "r") as f:
        assert (f["layers"].attrs["encoding-type"], f["layers"].attrs["encoding-version"]) == (
            TABLE_ENCODING, TABLE_ENCODING_VERSION) == ("filterdb-table", "1.1")
    with h5py.File(db_path / "filterdb.h5", "a") as f:  # as databases written before this encoding say
        for table in ("models", "layers"):
            f[table].attrs["encoding-type"], f[table].attrs["encoding-version"] = "dataframe", "0.2.0"
    with open_database(db_path) as db:
        assert list(db.models["name"]) == ["a"] and len(db.layers) == 1


def test_a_newer_table_encoding_is_refused(db_path):
    with h5py.File(db_path / "filterdb.h5", "a") as f:
        f["layers"].attrs["encoding-version"] = "1.2"
    with pytest.raises(FilterDBError, match=r"filterdb.h5:/layers: table encoding version 1.2 is newer"):
        open_database(db_path)


def test_a_newer_database_is_refused_not_rebuilt(db_path):
    with h5py.File(db_path / "filterdb.h5", "a") as f:
        f.attrs["encoding-version"] = "3.0"
    for mode in ("r", "a"):
        with pytest.raises(FilterDBError, match="database format version 3.0 is newer than this filterdb reads"):
            open_database(db_path, mode)
    with h5py.File(db_path / "filterdb.h5", "r") as f:
        assert f.attrs["encoding-version"] == "3.0"  # left as it was


def test_a_newer_shard_is_refused(db_path):
    shard = next((db_path / "shards").glob("*.h5"))
    with h5py.File(shard, "a") as f:
        f.attrs["encoding-version"] = "1.5"
    (db_path / "filterdb.h5").unlink()  # the master is rebuilt from the shards: the shard's version is read
    with pytest.raises(FilterDBError, match=f"{shard.name}: shard format version 1.5 is newer"):
        FilterDB.open(db_path, "a")


def test_checkpoint_versions(tmp_path):
    from filterdb.training.checkpoint import load_checkpoint, wrap_state_dict
    from filterdb.training.registry import create_model

    path = wrap_state_dict(create_model("cnn2-4", 10, 1).state_dict(), tmp_path / "m.pt", "cnn2-4", "digits", 10,
                           (1, 8, 8))
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == "1.0"
    for version in (1, "1.0"):  # the integer of checkpoints written before
        torch.save({**payload, "format_version": version}, path)
        assert load_checkpoint(path).model_string == "cnn2-4"
    torch.save({**payload, "format_version": "2.0"}, path)
    with pytest.raises(FilterDBError, match=r"m.pt: checkpoint format version 2.0 is newer than this filterdb reads"):
        load_checkpoint(path)


def test_evaluation_file_versions(tmp_path):
    import json

    from filterdb.evaluation_files import RESULTS_FORMAT, load_evaluation

    results = tmp_path / "m.pt.eval.json"
    for version, readable in ((1, True), ("1.0", True), ("1.9", False)):
        results.write_text(json.dumps({"format": RESULTS_FORMAT, "format_version": version, "attacks": []}))
        if readable:
            assert load_evaluation(results)["format_version"] == version
        else:
            with pytest.raises(FilterDBError, match=r"m.pt.eval.json: evaluation format version 1.9 is newer"):
                load_evaluation(results)


STR_COLUMNS = (Column("text", "str", "a string column"), Column("n", "int", "a number"))


def test_string_columns_are_fixed_length_while_short_widened_on_append_variable_length_when_long(tmp_path):
    values = ["ab", "é", ""]
    with h5py.File(tmp_path / "t.h5", "w") as f:
        write_table(f, "t", pd.DataFrame({"text": values, "n": [1, 2, 3]}), STR_COLUMNS, chunk_rows=4)
        assert f["t/text"].dtype == np.dtype("S2") and h5py.check_string_dtype(f["t/text"].dtype).length == 2
        for added in (["longer string", "x"], ["y"], ["z" * (FIXED_STRING_BYTES + 1)], ["ü"]):
            append_rows(f["t"], pd.DataFrame({"text": added, "n": [0] * len(added)}), STR_COLUMNS)
            values += added
            assert read_table(f["t"], STR_COLUMNS)["text"].tolist() == values
            assert list(f["t/text"].asstr()[()]) == values  # h5py alone reads it either way
        assert h5py.check_string_dtype(f["t/text"].dtype).length is None  # the long value made it variable-length


def test_table_encoding_1_0_variable_length_strings_still_read(tmp_path):
    with h5py.File(tmp_path / "t.h5", "w") as f:  # as filterdb wrote tables before 1.1: every string variable-length
        group = f.create_group("t")
        group.attrs.update({"encoding-type": "filterdb-table", "encoding-version": "1.0",
                            "column-order": ["text", "n"], "_index": ""})
        group.create_dataset("text", data=["ab", "é", ""], dtype=h5py.string_dtype("utf-8"))
        group.create_dataset("n", data=np.array([1, 2, 3]))
        group["text"].attrs["kind"], group["n"].attrs["kind"] = "str", "int"
        frame = read_table(group, STR_COLUMNS)
    assert frame["text"].tolist() == ["ab", "é", ""] and frame["n"].tolist() == [1, 2, 3]


def test_export_versions(db_path, tmp_path):
    """Exports of format 1.1 chunk their filters with Fletcher-32; 1.0 (contiguous) still reads, a newer one is refused."""
    out = tmp_path / "x.h5"
    with open_database(db_path) as db:
        db.export(out)
        want = db.read_layer(db.layers.iloc[0])
    with h5py.File(out, "r") as f:
        assert f.attrs["encoding-version"] == "1.1" and f["filters/3x3"].fletcher32
    with h5py.File(out, "a") as f:
        data = f["filters/3x3"][()]
        attrs = dict(f["filters/3x3"].attrs)
        del f["filters/3x3"]
        f["filters"].create_dataset("3x3", data=data).attrs.update(attrs)  # as format 1.0 wrote it
        f.attrs["encoding-version"] = "1.0"
    with open_database(out) as db:
        np.testing.assert_array_equal(db.read_layer(db.layers.iloc[0]), want)
    with h5py.File(out, "a") as f:
        f.attrs["encoding-version"] = "1.2"
    with pytest.raises(FilterDBError, match=r"x.h5: export format version 1.2 is newer than this filterdb reads \(1.1\)"):
        open_database(out)


def test_the_version_is_written_once_and_installed_as_written():
    """pyproject.toml reads the release from filterdb.versions; the installed metadata agrees with it."""
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    import filterdb
    from filterdb.versions import TOOL_VERSION

    assert filterdb.__version__ == TOOL_VERSION == version("filterdb")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "filterdb.versions.TOOL_VERSION"}
