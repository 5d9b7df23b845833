"""Fault injection: a damaged database is detected, named and repaired; never a wrong number, never a traceback.

Each test damages a real database (written by the real store) in the ways docs/integrity.md lists,
then runs the real commands and asserts the outcome: one named error line
(exit 1, no traceback), or a repaired database holding exactly the right models.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from cli_results import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from filterdb import open_database
from filterdb.build import add_module
from filterdb.errors import FilterDBError
from filterdb.ids import model_id
from filterdb.store import FilterDB

N_PAIRS = 2


def make_model(i: int) -> nn.Module:
    torch.manual_seed(100 + i)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def build_db(path: Path) -> Path:
    """Four small models, robust and normal pairs, 3x3 and 1x1 layers."""
    with FilterDB.open(path, "a") as db:
        for i in range(2 * N_PAIRS):
            training = "robust" if i % 2 else "normal"
            add_module(db, make_model(i), source="fault", name=f"m{i}", input_shape=(3, 8, 8),
                          record={"training": training, "dataset": "cifar10", "architecture": "tiny"})
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_db(tmp_path_factory.mktemp("pristine") / "db")


@pytest.fixture
def db(pristine, tmp_path) -> Path:
    copy = tmp_path / "db"
    shutil.copytree(pristine, copy)
    return copy


def assert_one_line_error(result, *names):
    """Exit 1, no traceback, one 'error:' line naming each of ``names`` and saying what to run."""
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def shard(db: Path, i: int) -> Path:
    return db / "shards" / f"{model_id('fault', f'm{i}')}.h5"


def filter_offset(path: Path, kernel: str = "3x3") -> tuple[int, int]:
    with h5py.File(path, "r") as f:
        ds = f["filters"][kernel]
        return ds.id.get_offset(), ds.id.get_storage_size()


def flip(path: Path, offset: int, n: int = 16) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = bytearray(fh.read(n))
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def compare_json(db: Path):
    return run("compare", "robust", "normal", "--layer", "all", "--db", db, "--format", "json")


def metrics_json(db: Path):
    return run("metrics", "--db", db, "--format", "json")


# --------------------------------------------------------------------------- the fault table

def test_flipped_filter_bytes_name_shard_model_and_layer(db):
    path = shard(db, 1)
    offset, _ = filter_offset(path)
    flip(path, offset + 100)
    assert run("info", "--db", db).exit_code == 0  # info reads no filters
    line = assert_one_line_error(compare_json(db), path, model_id("fault", "m1"), "layer 0", "verify --repair")
    assert "checksum" in line
    assert_one_line_error(metrics_json(db), path)
    with open_database(db) as opened, pytest.raises(FilterDBError, match="layer 0"):
        opened.read_model(model_id("fault", "m1"))


def test_shard_replaced_by_another_models_shard(db):
    shutil.copyfile(shard(db, 0), shard(db, 1))
    assert_one_line_error(compare_json(db), shard(db, 1), "verify --repair")
    assert_one_line_error(run("add", "--db", db, "timm:none"), shard(db, 1))


def test_deleted_shard_is_named_not_silently_dropped(db):
    shard(db, 2).unlink()
    for command in (("info",), ("compare", "robust", "normal"), ("metrics",)):
        assert_one_line_error(run(*command, "--db", db), shard(db, 2), "missing", "verify --repair")


def test_edited_metrics_cache_is_never_used(db):
    first = metrics_json(db)
    assert first.exit_code == 0, first.output
    good = json.loads(first.stdout)
    cache_file = db / "metrics" / f"{model_id('fault', 'm0')}.json"
    data = json.loads(cache_file.read_text())
    data["layers"]["sparsity"][0] = 0.987654321
    cache_file.write_text(json.dumps(data))
    again = metrics_json(db)
    assert again.exit_code == 0
    assert json.loads(again.stdout) == good  # recomputed, not the edited number
    assert f"{cache_file}" in again.stderr and "checksum" in again.stderr
    assert 0.987654321 not in json.loads(cache_file.read_text())["layers"]["sparsity"]  # rewritten


@pytest.mark.parametrize("damage", ["half", "empty", "header"])
def test_truncated_or_broken_shard_gives_one_line(db, damage):
    path = shard(db, 3)
    if damage == "header":
        flip(path, 0, 8)
    else:
        os.truncate(path, path.stat().st_size // 2 if damage == "half" else 0)
    assert_one_line_error(compare_json(db), path, "verify --repair")
    assert_one_line_error(run("add", "--db", db, "timm:none"), path)


def test_master_layer_start_moved_is_rebuilt_from_the_shards(db, pristine):
    with h5py.File(db / "filterdb.h5", "r+") as f:
        start = f["layers"]["start"]
        start[1] = start[1] + 5
    result = compare_json(db)
    assert result.exit_code == 0, result.output
    assert "master" in result.stderr and "rebuilding it from the shards" in result.stderr
    assert json.loads(result.stdout) == json.loads(compare_json(pristine).stdout)
    assert run("verify", "--db", db).exit_code == 0  # the rebuilt master is whole


def test_stray_copy_of_a_shard(db):
    stray = db / "shards" / "copy-of-a-shard.h5"
    shutil.copyfile(shard(db, 0), stray)
    for command in (("info",), ("compare", "robust", "normal"), ("metrics",)):
        assert_one_line_error(run(*command, "--db", db), stray, "stray", "verify --repair")
    repaired = run("verify", "--db", db, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert not stray.exists() and list((db / "quarantine").rglob("copy-of-a-shard.h5"))
    assert run("info", "--db", db).exit_code == 0


def test_metrics_folder_replaced_by_a_file(db, pristine):
    shutil.rmtree(db / "metrics", ignore_errors=True)
    (db / "metrics").write_text("not a folder")
    result = compare_json(db)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(compare_json(pristine).stdout)
    checked = run("verify", "--db", db)
    assert checked.exit_code == 1 and "metrics" in checked.stderr
    assert run("verify", "--db", db, "--repair").exit_code == 0
    assert (db / "metrics").is_dir() and run("verify", "--db", db).exit_code == 0


def test_lock_that_is_a_directory(db):
    (db / ".lock").unlink(missing_ok=True)
    (db / ".lock").mkdir()
    assert compare_json(db).exit_code == 0  # readers do not lock
    assert_one_line_error(run("add", "--db", db, "timm:none"), db / ".lock")
    repaired = run("verify", "--db", db, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert (db / ".lock").is_file()


# --------------------------------------------------------------------------- repair

def test_repair_quarantines_a_damaged_shard_and_lists_the_model(db, pristine):
    path = shard(db, 1)
    offset, _ = filter_offset(path, "1x1")
    flip(path, offset + 4)
    checked = run("verify", "--db", db)
    assert checked.exit_code == 1 and f"problem: {path}" in checked.stderr and "1 problem(s)" in checked.stderr
    repaired = run("verify", "--db", db, "--repair")
    assert repaired.exit_code == 1  # whole again, but a model was lost: it must be extracted again
    assert f"{model_id('fault', 'm1')} (fault:m1)" in repaired.stderr
    assert not path.exists() and list((db / "quarantine").rglob(path.name))
    assert run("verify", "--db", db).exit_code == 0
    with open_database(db) as opened:
        assert sorted(opened.models["name"]) == ["m0", "m2", "m3"]
    with FilterDB.open(db, "a") as writer:  # the rebuild 'filterdb build' would do
        add_module(writer, make_model(1), source="fault", name="m1", input_shape=(3, 8, 8),
                          record={"training": "robust", "dataset": "cifar10", "architecture": "tiny"})
    # the same numbers; sums over models in another order may differ in the last bit
    repaired_rows, pristine_rows = json.loads(compare_json(db).stdout), json.loads(compare_json(pristine).stdout)
    assert len(repaired_rows) == len(pristine_rows)
    for got, want in zip(repaired_rows, pristine_rows):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key


def test_repair_of_a_missing_shard_rebuilds_the_master_without_it(db):
    shard(db, 2).unlink()
    repaired = run("verify", "--db", db, "--repair")
    assert repaired.exit_code == 1 and "fault:m2" in repaired.stderr
    assert run("verify", "--db", db).exit_code == 0
    with open_database(db) as opened:
        assert sorted(opened.models["name"]) == ["m0", "m1", "m3"]


def test_verify_of_a_whole_database_exits_0(db):
    result = run("verify", "--db", db)
    assert result.exit_code == 0, result.output
    assert "4 intact shard(s), 0 problem(s)" in result.stderr


# --------------------------------------------------------------------------- the master

@pytest.mark.parametrize("seed", range(6))
def test_random_flips_in_the_master_rebuild_it_from_the_shards(db, pristine, seed):
    rng = np.random.default_rng(seed)
    master = db / "filterdb.h5"
    size = master.stat().st_size
    for offset in rng.integers(0, size, 4):
        flip(master, int(offset), 2)
    result = compare_json(db)
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(compare_json(pristine).stdout)


def test_damaged_master_on_a_read_only_directory_is_read_around(db, pristine):
    with h5py.File(db / "filterdb.h5", "r+") as f:
        f["layers"]["stop"][0] = 1
    (db / ".lock").touch()
    with open(db / ".lock") as fh:  # a writer holds the lock: the reader cannot rebuild the master
        import fcntl
        fcntl.flock(fh, fcntl.LOCK_EX)
        result = compare_json(db)
        info = run("info", "--db", db)
    assert result.exit_code == 0, result.output
    assert "reading the shards directly" in result.stderr
    assert json.loads(result.stdout) == json.loads(compare_json(pristine).stdout)
    assert info.exit_code == 0 and "4 models" in info.stdout


def test_first_moments_of_a_build_no_master_yet(db):
    (db / "filterdb.h5").unlink()
    with open(db / ".lock", "a") as fh:
        import fcntl
        fcntl.flock(fh, fcntl.LOCK_EX)  # the build that is writing it
        info = run("info", "--db", db, "--json")
        with open_database(db) as opened:
            assert len(opened.models) == 4 and opened.read_layer(opened.layers.iloc[0]).shape[0] == 24
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["models"] == 4 and "no master file yet" in info.stderr
    again = run("info", "--db", db)  # no writer: the reader writes the master itself
    assert again.exit_code == 0 and (db / "filterdb.h5").is_file()


def test_master_that_is_a_directory(db):
    (db / "filterdb.h5").unlink()
    (db / "filterdb.h5").mkdir()
    for command in (("info",), ("compare", "robust", "normal"), ("metrics",), ("export", db.parent / "x.h5")):
        result = run(*command, "--db", db)
        assert "Traceback" not in result.output and not isinstance(result.exception, (OSError, KeyError))
        assert result.exit_code == 0 and "filterdb.h5" in result.stderr, result.output
    assert_one_line_error(run("add", "--db", db, "timm:none"), db / "filterdb.h5")
    assert run("verify", "--db", db, "--repair").exit_code == 0
    assert (db / "filterdb.h5").is_file() and run("verify", "--db", db).exit_code == 0


def test_export_under_a_path_that_is_a_file(db, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(run("export", tmp_path / "afile" / "out.h5", "--db", db), "afile")


def test_export_copies_verified_filters(db, tmp_path):
    path = shard(db, 0)
    offset, _ = filter_offset(path)
    flip(path, offset)
    out = tmp_path / "out.h5"
    assert_one_line_error(run("export", out, "--db", db), path)
    assert not out.exists() and not list(tmp_path.glob(".out.h5.*"))


# --------------------------------------------------------------------------- a full disk

ADD_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_integrity import make_model
    from filterdb.errors import FilterDBError
    from filterdb.build import add_module
    from filterdb.store import FilterDB
    try:
        with FilterDB.open(sys.argv[1], "a") as db:
            add_module(db, make_model(2), source="fault", name="m2", input_shape=(3, 8, 8),
                          record={{"training": "normal", "dataset": "cifar10", "architecture": "tiny"}})
    except FilterDBError as exc:
        print("error:", exc, file=sys.stderr)
        sys.exit(1)
""")


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (root only; skipped elsewhere): room for a format 2.0 master (chunked tables,
    ~1.6 MiB for two models, where the old flat master took a few KiB) and the publish's headroom."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16M", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("room_after_shard", [0, 16 << 10])
def test_disk_full_during_publish_one_line_no_temp_and_readers_read_the_last_master(small_disk, room_after_shard):
    db = small_disk / "db"
    with FilterDB.open(db, "a") as writer:
        for i in (0, 1):
            add_module(writer, make_model(i), source="fault", name=f"m{i}", input_shape=(3, 8, 8),
                              record={"training": "normal", "dataset": "cifar10", "architecture": "tiny"})
    shard_size = shard(db, 0).stat().st_size
    stat = os.statvfs(small_disk)
    free = stat.f_bavail * stat.f_frsize
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * max(free - shard_size - room_after_shard, 0))
    proc = subprocess.run([sys.executable, "-c", ADD_SCRIPT.format(tests=os.path.dirname(__file__)), str(db)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # not -11
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in proc.stderr
    assert not [p for p in db.rglob("*.tmp")]
    info = run("info", "--db", db, "--json")  # the disk is still full
    assert info.exit_code == 0, info.output
    names = {m["name"] for m in json.loads(info.stdout)["model_table"]}
    assert names == {"m0", "m1"}  # the last good master
    filler.unlink()
    with open_database(db) as opened:  # room again: a committed shard is picked up, nothing is lost
        assert {"m0", "m1"} <= set(opened.models["name"]) <= {"m0", "m1", "m2"}  # m2 if its shard was committed
        for mid, name in zip(opened.models.index, opened.models["name"]):
            layers = opened.layers[opened.layers["model_id"] == mid]
            convs = [m for m in make_model(int(name[1:])) if isinstance(m, nn.Conv2d)]
            for (_, row), conv in zip(layers.iterrows(), convs):
                assert opened.read_layer(row).tobytes() == conv.weight.detach().numpy().reshape(
                    -1, *conv.kernel_size).tobytes()
    assert run("verify", "--db", db).exit_code == 0


# --------------------------------------------------------------------------- the three silent acceptances

def _add(db_path, module, name="x", input_shape=(3, 8, 8)):
    with FilterDB.open(db_path, "a") as writer:
        return add_module(writer, module, source="decide", name=name, input_shape=input_shape)


def test_nan_in_a_batchnorm_buffer_only_is_refused(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[1].running_var[2] = float("nan")
    with pytest.raises(FilterDBError, match=r"decide:x, buffer 1.running_var: 1 value\(s\) are NaN"):
        _add(tmp_path / "db", model)
    assert not list((tmp_path / "db" / "shards").glob("*.h5"))


def test_float16_weights_are_stored_as_their_exact_float32_values(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).half()
    mid = _add(tmp_path / "db", model)
    with open_database(tmp_path / "db") as opened:
        for (_, row), conv in zip(opened.layers.iterrows(), [model[0], model[2]]):
            stored = opened.read_layer(row)
            assert stored.dtype == np.float32
            assert stored.tobytes() == conv.weight.detach().float().numpy().reshape(-1, 3, 3).tobytes()
            assert np.array_equal(stored.astype(np.float16).astype(np.float32), stored)  # nothing rounded
        assert opened.models.loc[mid, "n_filters"] == 12 + 16


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 2, 8)])
def test_an_input_smaller_than_the_kernels_is_refused(tmp_path, shape):
    model = nn.Sequential(nn.Conv2d(3 if shape[0] == 3 else 1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1))
    with pytest.raises(FilterDBError, match="is smaller than its 3x3 kernels"):
        _add(tmp_path / "db", model, input_shape=shape)


# --------------------------------------------------------------------------- workers and clusters

def slow_load(spec):
    time.sleep(300)


PARALLEL_BUILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_integrity import slow_load
    from filterdb.build import build
    from filterdb.sources.base import ModelSpec
    from filterdb.store import FilterDB
    with FilterDB.open(sys.argv[1], "a") as db:
        build(db, [ModelSpec("slow", f"s{{i}}", load=slow_load) for i in range(4)], jobs=2, show_progress=False)
""")


def children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_kill_9_of_a_parallel_build_leaves_no_worker_and_frees_the_lock(db):
    proc = subprocess.Popen([sys.executable, "-c", PARALLEL_BUILD.format(tests=os.path.dirname(__file__)), str(db)])
    deadline = time.monotonic() + 60
    while len(workers := children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers) >= 2, "the build did not start its workers"
    time.sleep(1.0)  # the workers are inside slow_load now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), "a worker outlived its killed parent"
    with FilterDB.open(db, "a") as writer:  # the lock is free and the database whole
        assert len(writer.models) == 4
    assert run("verify", "--db", db).exit_code == 0


def test_dask_build_without_workers_or_scheduler_gives_up_in_bounded_time(db, monkeypatch):
    from dask.distributed import LocalCluster

    monkeypatch.setenv("FILTERDB_DASK_TIMEOUT", "3")
    spec_args = ["build", "-l", "linf-cifar10", "-m", "Wong2020Fast", "--offline", "--model-dir", db.parent / "m",
                 "--db", db]
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:  # every worker lost
        t0 = time.monotonic()
        result = run(*spec_args, "--scheduler", cluster.scheduler_address)
        assert time.monotonic() - t0 < 30
        line = assert_one_line_error(result, cluster.scheduler_address, "no worker for 3 s", "rerun")
        assert "1 model(s) not built" in line
        address = cluster.scheduler_address
        import threading
        threading.Timer(2.0, cluster.close).start()  # the scheduler goes away mid-build
        t0 = time.monotonic()
        result = run(*spec_args, "--scheduler", address)
        assert time.monotonic() - t0 < 60
    assert_one_line_error(result, address, "rerun")
    assert run("verify", "--db", db).exit_code == 0  # what was committed is intact


# --------------------------------------------------------------------------- untrusted pickles

class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_robustbench_weights_load_weights_only_whatever_torchs_default(tmp_path, monkeypatch):
    marker = tmp_path / "payload-ran"
    weights = tmp_path / "models" / "cifar10" / "Linf" / "Wong2020Fast.pt"
    weights.parent.mkdir(parents=True)
    torch.save({"state_dict": Payload(marker)}, weights)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch < 2.6's default
    torch.load(weights)  # the payload is live: torch's default alone would run it
    assert marker.exists()
    marker.unlink()
    result = run("build", "-l", "linf-cifar10", "-m", "Wong2020Fast", "--offline", "--model-dir", tmp_path / "models",
                 "--db", tmp_path / "db")
    assert_one_line_error(result, "Wong2020Fast", "could not load")
    assert not marker.exists()


def write_cifar(root: Path, hostile: Path | None = None) -> Path:
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        if hostile is not None and name == "test_batch":
            batch[b"extra"] = Payload(hostile)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def test_cifar_batches_are_read_without_running_pickled_code(tmp_path):
    from filterdb.training.data import load_dataset

    good = load_dataset("cifar10", "test", data_dir=write_cifar(tmp_path / "good"))
    assert len(good) == 4
    marker = tmp_path / "payload-ran"
    with pytest.raises(FilterDBError, match="test_batch is not a valid CIFAR-10 batch.*refusing to load posix.system"):
        load_dataset("cifar10", "test", data_dir=write_cifar(tmp_path / "bad", hostile=marker))
    assert not marker.exists()


# --------------------------------------------------------------------------- property: never a number from damaged bytes

@pytest.fixture(scope="module")
def pristine_outputs(pristine):
    outputs = {}
    for name, command in COMMANDS.items():
        result = run(*command, "--db", pristine)
        assert result.exit_code == 0, result.output
        outputs[name] = result.stdout
    return outputs


COMMANDS = {"compare": ("compare", "robust", "normal", "--layer", "all", "--format", "json"),
            "metrics": ("metrics", "--format", "json")}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.lists(st.tuples(st.integers(0, 2 * N_PAIRS - 1), st.floats(0, 1, exclude_max=True),
                                 st.integers(1, 16)), min_size=1, max_size=3))
def test_random_byte_flips_in_shards_never_give_a_number_computed_from_them(pristine, pristine_outputs,
                                                                            tmp_path_factory, damage):
    db = tmp_path_factory.mktemp("flips") / "db"
    shutil.copytree(pristine, db)
    shutil.rmtree(db / "metrics", ignore_errors=True)  # the numbers must come from the damaged shards
    for i, where, n in damage:
        path = shard(db, i)
        flip(path, int(where * (path.stat().st_size - n)), n)
    for name, command in COMMANDS.items():
        result = run(*command, "--db", db)
        assert "Traceback" not in result.output
        if result.exit_code == 0:
            assert result.stdout == pristine_outputs[name]  # the flips hit bytes no number depends on
        else:
            assert_one_line_error(result, "shards", "verify --repair")
    assert run("verify", "--db", db).exit_code in (0, 1)


# --------------------------------------------------------------------------- durability

def test_every_commit_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    """The order of the real system calls while a model, its master, a cache file and a checkpoint are written."""
    from filterdb.analysis.metrics_table import database_metrics
    from filterdb.training.checkpoint import save_atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    db = tmp_path / "db"
    _add(db, make_model(0))
    database_metrics(db)
    save_atomic({"x": torch.zeros(2)}, tmp_path / "ckpt" / "last.pt")
    renames = [e for e in events if e[0] == "rename"]
    targets = {Path(dst).name for _, _, dst in renames}
    assert {"filterdb.h5", f"{model_id('decide', 'x')}.h5", f"{model_id('decide', 'x')}.json", "last.pt"} <= targets
    for _, src, dst in renames:
        i = events.index(("rename", src, dst))
        assert ("fsync", src) in events[:i], f"{src} renamed before it was synced"
        assert ("fsync", os.path.dirname(dst)) in events[i + 1:], f"{os.path.dirname(dst)} not synced after the rename"
    assert not list(tmp_path.rglob("*.tmp"))
