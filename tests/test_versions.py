"""Format versions: one form (MAJOR.MINOR), older versions read, newer ones refused with one line."""
from __future__ import annotations

import h5py
import pytest
import torch
from torch import nn

from filterdb.build import add_module
from filterdb.errors import FilterDBError
from filterdb.h5table import TABLE_ENCODING, TABLE_ENCODING_VERSION
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
            TABLE_ENCODING, TABLE_ENCODING_VERSION) == ("filterdb-table", "1.0")
    with h5py.File(db_path / "filterdb.h5", "a") as f:  # as databases written before this encoding say
        for table in ("models", "layers"):
            f[table].attrs["encoding-type"], f[table].attrs["encoding-version"] = "dataframe", "0.2.0"
    with open_database(db_path) as db:
        assert list(db.models["name"]) == ["a"] and len(db.layers) == 1


def test_a_newer_table_encoding_is_refused(db_path):
    with h5py.File(db_path / "filterdb.h5", "a") as f:
        f["layers"].attrs["encoding-version"] = "1.1"
    with pytest.raises(FilterDBError, match=r"filterdb.h5:/layers: table encoding version 1.1 is newer"):
        open_database(db_path)


def test_a_newer_database_is_refused_not_rebuilt(db_path):
    with h5py.File(db_path / "filterdb.h5", "a") as f:
        f.attrs["encoding-version"] = "3.0"
    for mode in ("r", "a"):
        with pytest.raises(FilterDBError, match="database format version 3.0 is newer than this filterdb reads"):
            FilterDB.open(db_path, mode)
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

    from filterdb.evaluations import RESULTS_FORMAT, load_evaluation

    results = tmp_path / "m.pt.eval.json"
    for version, readable in ((1, True), ("1.0", True), ("1.9", False)):
        results.write_text(json.dumps({"format": RESULTS_FORMAT, "format_version": version, "attacks": []}))
        if readable:
            assert load_evaluation(results)["format_version"] == version
        else:
            with pytest.raises(FilterDBError, match=r"m.pt.eval.json: evaluation format version 1.9 is newer"):
                load_evaluation(results)
