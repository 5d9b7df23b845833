"""A database directory whose layout is wrong (``shards`` a file, ``filterdb.h5`` a directory with
no shard beside it) is one error line naming the path, never an empty result: ``info`` and
``export`` exit 1 and ``export`` writes no file."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_results import one_error_line, run
from torch import nn

from filterdb.build import add_module
from filterdb.store import FilterDB


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("layout") / "db"
    with FilterDB.open(path, "a") as db:
        for i in range(2):
            torch.manual_seed(i)
            add_module(db, nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)), source="layout", name=f"m{i}",
                       input_shape=(3, 8, 8))
    return path


@pytest.fixture
def db(pristine, tmp_path) -> Path:
    copy = tmp_path / "db"
    shutil.copytree(pristine, copy)
    return copy


def shards_a_file(db: Path) -> Path:
    shutil.rmtree(db / "shards", ignore_errors=True)
    (db / "shards").write_text("not a folder")
    return db / "shards"


def master_a_directory_without_shards(db: Path) -> Path:
    shutil.rmtree(db / "shards")
    (db / "filterdb.h5").unlink()
    (db / "filterdb.h5").mkdir()
    return db / "filterdb.h5"


def both(db: Path) -> Path:
    master_a_directory_without_shards(db)
    return shards_a_file(db)


def empty_shards_and_master_a_directory(db: Path) -> Path:
    path = master_a_directory_without_shards(db)
    (db / "shards").mkdir()
    return path


@pytest.mark.parametrize("damage, words", [
    (shards_a_file, "is a file, not the folder of the database's shards"),
    (master_a_directory_without_shards, "is a directory, not the master file, and"),
    (empty_shards_and_master_a_directory, "holds no shard to read instead"),
    (both, "is a file, not the folder"),
])
def test_a_wrong_layout_is_one_line_naming_the_path(db, tmp_path, damage, words):
    path = damage(db)
    for command in (("info",), ("info", "--json"), ("metrics",), ("compare", "robust", "normal")):
        line = one_error_line(run(*command, "--db", db), path, words)
        assert "0 models" not in line
    out = tmp_path / "out.h5"
    one_error_line(run("export", out, "--db", db), path, words)
    assert not out.exists() and not list(tmp_path.glob(".out.h5*"))  # no file, not even an empty one
    one_error_line(run("add", "timm:none", "--db", db), path)  # a writer does not build around it either


def test_a_master_that_is_a_directory_beside_the_shards_is_still_read_around(db, tmp_path):
    (db / "filterdb.h5").unlink()
    (db / "filterdb.h5").mkdir()
    result = run("info", "--db", db, "--json")
    assert result.exit_code == 0 and '"models": 2' in result.stdout, result.output
    assert "reading the shards directly" in result.stderr


# --------------------------------------------------------------------------- temporary files

def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_verify_lists_every_stray_or_stale_temp_file_and_repair_quarantines_them(db):
    from filterdb.ids import model_id

    mid, pid = model_id("layout", "m0"), dead_pid()
    (db / "metrics").mkdir(exist_ok=True)
    strays = [db / "shards" / "foo.h5.tmp", db / "metrics" / f".{mid}.json.{pid}.tmp",
              db / "shards" / f".{mid}.{pid}.tmp", db / "deep" / "er" / "x.tmp"]
    for path in strays:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    in_progress = db / "shards" / f".{mid}.{os.getpid()}.tmp"  # a live writer's: not a problem
    in_progress.write_bytes(b"being written")
    checked = run("verify", "--db", db)
    assert checked.exit_code == 1 and f"{len(strays)} problem(s)" in checked.stderr, checked.output
    for path in strays:
        assert f"problem: {path}" in checked.stderr
    assert f"process {pid}, which is no longer running" in checked.stderr and str(in_progress) not in checked.stderr
    repaired = run("verify", "--db", db, "--repair")
    assert repaired.exit_code == 0, repaired.output  # no model was lost
    for path in strays:
        assert not path.exists() and list((db / "quarantine").rglob(path.name))
    # the repair holds the writer lock, under which no write is in progress: the writer's open removed it
    assert not in_progress.exists()
    assert run("verify", "--db", db).exit_code == 0


def test_a_builds_end_removes_its_dead_workers_temp_shards(tmp_path):
    from filterdb.strays import remove_dead_temps

    dead, live = dead_pid(), os.getpid()
    files = {name: tmp_path / name for name in (f".abc.{dead}.tmp", f".abd.{live}.tmp", "abc.h5", "foo.h5.tmp")}
    for path in files.values():
        path.write_bytes(b"x")
    assert remove_dead_temps(tmp_path) == [files[f".abc.{dead}.tmp"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".abd.{live}.tmp", "abc.h5", "foo.h5.tmp"])
