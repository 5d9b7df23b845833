"""A build or add that skips a model already present first checks its shard, and every command judges a shard alike.

Each test builds a small database with the real ``filterdb build --checkpoints`` from three tiny training
checkpoints, damages one shard file on disk, and runs the real commands: a damaged shard whose checkpoint
is in the build is extracted again ("repaired") and the database then gives the same numbers as before
the damage; the API, ``export``, ``build`` and ``verify`` name a shard whose object headers are damaged
with the same line.
"""
import json
import os
import shutil
from pathlib import Path

import h5py
import pytest
import torch
from cli_results import one_error_line, run
from test_integrity import filter_offset, flip

from filterdb import open_database
from filterdb.errors import FilterDBError
from filterdb.training import create_model
from filterdb.training.checkpoint import wrap_state_dict

N_MODELS = 3


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A folder with ``ckpts/`` (three cnn4-16 checkpoints, their conv weights saved beside) and ``db/`` built from them."""
    root = tmp_path_factory.mktemp("heal")
    for i in range(N_MODELS):
        torch.manual_seed(i)
        model = create_model("cnn4-16", num_classes=10, in_chans=1)
        wrap_state_dict(model.state_dict(), root / "ckpts" / f"m{i}" / "model.pt", "cnn4-16", "digits", 10, (1, 8, 8),
                        metrics={"clean_acc": 90.0})
    result = run("build", "--checkpoints", root / "ckpts", "--db", root / "db")
    assert result.exit_code == 0 and f"{N_MODELS} added, 0 already present, 0 failed" in result.output, result.output
    return root


@pytest.fixture
def case(pristine, tmp_path) -> Path:
    shutil.copytree(pristine, tmp_path / "case")
    return tmp_path / "case"


@pytest.fixture(scope="module")
def pristine_numbers(pristine) -> tuple[dict, list]:
    return filter_bytes(pristine / "db"), metrics(pristine / "db")


def filter_bytes(db: Path) -> dict:
    """model_id -> kernel -> the bytes of its filters, read through the API."""
    with open_database(db) as opened:
        return {mid: {k: opened.read_model(mid, k).tobytes() for k in opened.kernels} for mid in opened.models.index}


def metrics(db: Path) -> list:
    result = run("metrics", "--db", db, "--format", "json")
    assert result.exit_code == 0, result.output
    return sorted(json.loads(result.output), key=lambda row: (row["model_id"], row["layer_index"]))


def first_shard(db: Path) -> Path:
    return sorted((db / "shards").glob("*.h5"))[0]


def damage_line(text: str) -> str:
    """What a command says of a damaged file: its message up to the repair hint."""
    return text.split("; run 'filterdb verify")[0].removeprefix("error: ").removeprefix("problem: ")


def rebuild(case: Path, *extra):
    return run("build", "--checkpoints", case / "ckpts", "--db", case / "db", *extra)


def assert_healed(case: Path, shard: Path, pristine_numbers, result, repaired_line: str = "") -> None:
    """The build repaired exactly ``shard``'s model, verify is clean, and the numbers are the undamaged ones."""
    assert result.exit_code == 0, result.output
    assert f"0 added, 1 repaired, {N_MODELS - 1} already present, 0 failed" in result.output, result.output
    repaired = [line for line in result.output.splitlines() if line.startswith("repaired:")]
    assert len(repaired) == 1 and str(shard) in repaired[0], result.output
    assert repaired_line in repaired[0]
    assert run("verify", "--db", case / "db").exit_code == 0
    assert filter_bytes(case / "db") == pristine_numbers[0]
    assert metrics(case / "db") == pristine_numbers[1]
    again = rebuild(case, "--verify")
    assert again.exit_code == 0 and f"0 added, {N_MODELS} already present, 0 failed" in again.output, again.output


# --------------------------------------------------------------------------- one judgment of a shard for every command

def test_a_flip_in_a_shards_object_headers_is_named_alike_by_api_export_build_and_verify(case, pristine_numbers):
    db, shard = case / "db", first_shard(case / "db")
    assert 3072 + 16 < filter_offset(shard)[0]  # the flip hits HDF5 metadata (the tables), not filter data
    flip(shard, 3072)
    with open_database(db) as opened, pytest.raises(FilterDBError) as api:
        for mid in opened.models.index:
            opened.read_model(mid)
    said = damage_line(str(api.value))
    assert said.startswith(f"{shard}: the shard cannot be read (")
    exported = one_error_line(run("export", case / "out.h5", "--db", db), shard)
    assert damage_line(exported) == said and not (case / "out.h5").exists()
    verified = run("verify", "--db", db)
    assert verified.exit_code == 1
    problems = [line for line in verified.output.splitlines() if line.startswith("problem:")]
    assert [damage_line(line) for line in problems] == [said]
    # build agrees that it is damaged (the same line) and, its checkpoint being at hand, extracts it again
    assert_healed(case, shard, pristine_numbers, rebuild(case), said)


def test_header_damage_under_an_unchanged_mtime_is_healed_by_verify(case, pristine_numbers):
    """A shard changed in place with its size and mtime kept (bit rot): the API reads its filters through the
    master's records, bit-exact, without opening it; the cheap check reads no table, so only --verify (which
    reads the shard whole, as verify does) sees it and extracts it again."""
    db, shard = case / "db", first_shard(case / "db")
    stat = shard.stat()
    flip(shard, 3072)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert filter_bytes(db) == pristine_numbers[0]
    assert run("verify", "--db", db).exit_code == 1
    cheap = rebuild(case)
    assert cheap.exit_code == 0 and f"0 added, {N_MODELS} already present, 0 failed" in cheap.output, cheap.output
    assert_healed(case, shard, pristine_numbers, rebuild(case, "--verify"), f"{shard}: the shard cannot be read")


# --------------------------------------------------------------------------- the check before skipping a model

def test_cheap_check_heals_a_truncated_shard(case, pristine_numbers):
    shard = first_shard(case / "db")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert_healed(case, shard, pristine_numbers, rebuild(case), str(shard))


def test_cheap_check_heals_a_shard_swapped_for_another_models(case, pristine_numbers):
    shards = sorted((case / "db" / "shards").glob("*.h5"))
    stat = shards[0].stat()
    assert shards[1].stat().st_size == stat.st_size
    shutil.copyfile(shards[1], shards[0])  # the other model's id and digest under this one's name, size and mtime:
    os.utime(shards[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # opening for writing sees nothing changed
    assert_healed(case, shards[0], pristine_numbers, rebuild(case), f"this file holds model {shards[1].stem}")


def test_flipped_filter_byte_is_healed_by_verify_only(case, pristine_numbers):
    db, shard = case / "db", first_shard(case / "db")
    offset, _ = filter_offset(shard)
    flip(shard, offset + 100, n=1)
    cheap = rebuild(case)  # the cheap check reads no filter byte: it does not see this (as --help says)
    assert cheap.exit_code == 0 and f"0 added, {N_MODELS} already present, 0 failed" in cheap.output, cheap.output
    assert run("verify", "--db", db).exit_code == 1
    assert_healed(case, shard, pristine_numbers, rebuild(case, "--verify"), "do not match their checksum")


def test_add_verify_heals_a_flipped_filter_byte(case, pristine_numbers):
    db, shard = case / "db", first_shard(case / "db")
    with h5py.File(shard, "r") as f:
        key = str(f["models"]["key"][0].decode())
    checkpoint = next(p for p in (case / "ckpts").rglob("*.pt") if p.parent.name in key)
    flip(shard, filter_offset(shard)[0] + 100, n=1)
    assert "0 added, 1 already present" in run("add", checkpoint, "--db", db).output
    result = run("add", checkpoint, "--db", db, "--verify")
    assert result.exit_code == 0 and "0 added, 1 repaired, 0 already present, 0 failed" in result.output, result.output
    assert run("verify", "--db", db).exit_code == 0
    assert filter_bytes(db) == pristine_numbers[0]


def test_damaged_shard_whose_source_is_not_in_the_build_is_named_with_exit_1(case):
    db, shard = case / "db", first_shard(case / "db")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with h5py.File(sorted((db / "shards").glob("*.h5"))[1], "r") as f:
        other = str(f["models"]["key"][0].decode())
    others = [p for p in (case / "ckpts").rglob("*.pt") if p.parent.name in other]
    before = {p.name: p.read_bytes() for p in (db / "shards").iterdir()}
    line = one_error_line(run("add", others[0], "--db", db), shard)
    assert "verify --repair" in line
    line = one_error_line(rebuild(case, "--models", f"*{others[0].parent.name}*"), shard)
    assert "verify --repair" in line
    assert {p.name: p.read_bytes() for p in (db / "shards").iterdir()} == before  # nothing changed
