"""The metrics cache's snapshot: one file with every model's cached rows, exactly what the cache files give."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from filterdb.analysis import cache
from filterdb.analysis.metrics_table import layer_metrics_frame
from filterdb.build import add_module
from filterdb.store import FilterDB, open_database


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "db"
    with FilterDB.open(path, "a") as db:
        for i in range(4):
            torch.manual_seed(i)
            net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 3), nn.Conv2d(6, 2, 1))
            add_module(db, net, source="test", name=f"m{i}", input_shape=(1, 9, 9),
                          record={"training": "robust" if i % 2 else "normal"})
    return path


def frame_and_moments(path, ids=None):
    with open_database(path) as db:
        return layer_metrics_frame(db, ids or list(db.models.index))


def assert_same(first, second):
    pd.testing.assert_frame_equal(first[0], second[0])
    assert first[1].keys() == second[1].keys()
    for key, m in first[1].items():
        other = second[1][key]
        assert m.count == other.count and np.array_equal(m.mean, other.mean) and np.array_equal(m.scatter, other.scatter)


def test_snapshot_gives_exactly_what_the_cache_files_give(db_path):
    computed = frame_and_moments(db_path)
    assert cache.snapshot_path(db_path).exists()
    from_snapshot = frame_and_moments(db_path)
    cache.snapshot_path(db_path).unlink()
    from_files = frame_and_moments(db_path)
    assert_same(computed, from_snapshot)
    assert_same(computed, from_files)
    with open_database(db_path) as db:
        ids = list(db.models.index)
    some = frame_and_moments(db_path, ids[::-1][:2])  # any subset, in the order asked
    assert list(dict.fromkeys(some[0]["model_id"])) == ids[::-1][:2]


def test_edited_snapshot_is_never_used(db_path, capsys):
    good = frame_and_moments(db_path)[0]
    path = cache.snapshot_path(db_path)
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["column:l1_norm"] = arrays["column:l1_norm"] + 1.0  # digest kept: the edit must be found
    np.savez(path, **arrays)
    from filterdb.cli.database_check import verify_database
    problems = verify_database(db_path).problems
    assert [(p.path, "checksum" in p.what) for p in problems] == [(path, True)]
    again = frame_and_moments(db_path)[0]
    pd.testing.assert_frame_equal(again, good)
    assert f"{path}" in capsys.readouterr().err
    assert cache.check_snapshot(path) == ""  # rewritten whole


def test_a_changed_cache_file_is_read_again_not_taken_from_the_snapshot(db_path):
    frame_and_moments(db_path)
    with open_database(db_path) as db:
        mid = db.models.index[1]
    file = cache.cache_path(db_path, mid)
    file.write_text(file.read_text().replace('"ve_raw": [', '"ve_raw": [0.5, '))  # edited: its digest fails
    before = cache.load_snapshot(db_path, 0.01).files[mid]
    frame_and_moments(db_path)
    after = cache.load_snapshot(db_path, 0.01).files[mid]
    assert after[0] == before[0] and after[1:] != before[1:]  # recomputed and the file rewritten
