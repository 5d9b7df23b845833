"""Reads are free of side effects: what ``info``, ``metrics``, ``compare`` and ``show`` do through the
API, watched by an audit hook (``sys.addaudithook``) in a fresh interpreter.

The hook records every operation that writes: ``open`` for writing (a write, append or create mode,
or the flags O_WRONLY, O_RDWR, O_CREAT, O_APPEND, O_TRUNC), renames, removals, ``mkdir``/``rmdir``,
``truncate``, ``chmod``, ``utime``, links, temporary files, ``fcntl.flock`` (the writer lock) and
every ``h5py.File`` opened in a mode other than "r" (HDF5 opens files in C, where no audit event is
raised). Beside the hook, every file under the database, FILTERDB_HOME, TMPDIR and HOME is compared
before and after, by size, mtime and inode, so a write the hook cannot see is found too.

The documented caches (docs/integrity.md, "When a reader writes") are the only places a read may
write: ``<db>/metrics/``, ``<db>/divergence/`` and ``$FILTERDB_HOME/cache/`` (an export keeps its
metrics and divergence caches in ``$FILTERDB_HOME/cache/<digest>/``), and only while they are cold.
Once warm, a read writes nothing at all. Code caches are not filterdb's data: Python's bytecode is
switched off here (PYTHONDONTWRITEBYTECODE), and numba's compiled kernels live beside the analysis
modules (``__pycache__``); a cold one is filled there, a warm one is only probed (numba makes sure
the folder is writable with an unnamed temporary file), which changes nothing on disk.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from filterdb.build import add_module
from filterdb.store import FilterDB

CACHES = ("metrics", "divergence")  # under the database directory; and $FILTERDB_HOME/cache
NUMBA_CACHE = Path(importlib.import_module("filterdb.analysis").__file__).parent / "__pycache__"

WATCHER = textwrap.dedent(r'''
    import json, os, sys

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    WRITING = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate", "os.chmod",
               "os.chown", "os.utime", "os.link", "os.symlink", "shutil.copyfile", "shutil.copytree",
               "shutil.move", "tempfile.mkstemp", "tempfile.mkdtemp", "fcntl.flock", "fcntl.lockf", "h5py.File"}
    events = []
    watching = [False]

    def hook(event, args):
        if not watching[0]:
            return
        if event == "open":
            path, mode, flags = args
            if os.path.basename(str(path)) == ".lock":  # the writer lock: a reader never opens it at all
                events.append(["open", str(path), str(mode), flags])
            elif (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & WRITE_FLAGS):
                events.append(["open", str(path), str(mode), flags])
        elif event in WRITING:
            if event == "h5py.File" and args[1] == "r":
                return
            events.append([event, *(a if isinstance(a, (int, type(None))) else str(a) for a in args)])

    sys.addaudithook(hook)

    import h5py

    _init = h5py.File.__init__

    def audited_init(self, name, mode="r", *args, **kwargs):  # HDF5 opens files in C: no "open" event
        sys.audit("h5py.File", name, mode)
        _init(self, name, mode, *args, **kwargs)

    h5py.File.__init__ = audited_init

    db_path, what = sys.argv[1], sys.argv[2:]

    import io
    from filterdb.analysis import compare_groups, database_metrics
    from filterdb.analysis.groups import find_model
    from filterdb.cli.analysis import find_layer
    from filterdb.store import open_database
    from filterdb.summary import print_info

    watching[0] = True
    if "open" in what:  # opening alone
        db = open_database(db_path)
        n_models = len(db.models)
        db.close()
    if "info" in what:
        with open_database(db_path) as db:
            print_info(db, "table", file=io.StringIO())
            print_info(db, "json", file=io.StringIO())
            n_models, n_layers = len(db.models), len(db.layers)
    if "metrics" in what:
        metrics = database_metrics(db_path)
    if "compare" in what:
        result = compare_groups(db_path, "robust", "normal", layer="first")
        by_layer = compare_groups(db_path, "robust", "normal", layer="all", basis="groups")
    if "show" in what:
        with open_database(db_path) as db:
            mid = find_model(db.models, "robust-0")
            layers = db.layers[db.layers["model_id"] == mid]
            row = find_layer(layers, "0")
            shown = database_metrics(db, [mid])
            filters = db.read_layer(row)
            model = db.read_model(mid)
    if "draws" in what:  # the statistics' seeded draws kept on disk (large groups only)
        from filterdb.analysis.stats import labelings
        masks, exact = labelings(110, 110)
        assert not exact and masks.shape == (9999, 220)
    watching[0] = False
    sys.stdout.write(json.dumps(events))
''')


def net(seed: int, dead_first: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(6, 3, 1))
    with torch.no_grad():
        model[0].weight[:dead_first] = 0
    return model


@pytest.fixture
def clean_db(tmp_path: Path) -> Path:
    """A clean database of six tiny models (three robust, three normal), written by the real build API."""
    path = tmp_path / "db"
    with FilterDB.open(path, "a") as db:
        for i in range(3):
            for training, seed, dead in (("robust", i, 2), ("normal", 10 + i, 0)):
                add_module(db, net(seed, dead), source="test", name=f"{training}-{i}", input_shape=(1, 8, 8),
                           record={"training": training, "dataset": "digits", "architecture": "cnn"})
    return path


def files_under(*roots: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under ``roots``: path -> (size, mtime_ns, inode)."""
    out = {}
    for root in roots:
        for here, dirs, files in os.walk(root):
            for name in dirs + files:
                st = os.lstat(os.path.join(here, name))
                out[os.path.join(here, name)] = (st.st_size if name in files else 0, st.st_mtime_ns, st.st_ino)
    return out


def run_reads(tmp_path: Path, db: Path, *what: str) -> tuple[list[list], set[str]]:
    """Run the reads ``what`` in a fresh interpreter under the audit hook: (the writes it recorded, the
    paths under the database, FILTERDB_HOME, TMPDIR and HOME that were created, changed or removed)."""
    home, tmp, user = tmp_path / "filterdb-home", tmp_path / "tmpdir", tmp_path / "user-home"
    for folder in (home, tmp, user):
        folder.mkdir(exist_ok=True)
    env = {**os.environ, "FILTERDB_HOME": str(home), "TMPDIR": str(tmp), "HOME": str(user),
           "MPLCONFIGDIR": str(user / "mpl"), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}  # the interpreter's own bytecode cache is not filterdb's
    env.pop("FILTERDB_DB", None)
    env.pop("NUMBA_CACHE_DIR", None)  # numba's kernels: beside the analysis modules (NUMBA_CACHE)
    roots = (db, home, tmp, user, NUMBA_CACHE)
    before = files_under(*roots)
    done = subprocess.run([sys.executable, "-c", WATCHER, str(db), *what], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = files_under(*roots)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    return json.loads(done.stdout), changed


def outside_caches(paths, db: Path, home: Path) -> list:
    """The paths outside the documented caches (and numba's code cache)."""
    allowed = [str(db / name) for name in CACHES if db.is_dir()] + [str(home / "cache"), str(NUMBA_CACHE)]
    return sorted(p for p in paths if not any(p == a or p.startswith(a + os.sep) for a in allowed))


def data_writes(events: list[list]) -> list[list]:
    """The recorded writes, less numba's probe of its (warm) code cache: an ``os.mkdir`` of the folder that
    is there and an unnamed temporary file in it (both name the folder itself, never a file in it)."""
    return [e for e in events if not (e[0] in ("os.mkdir", "open") and e[1] == str(NUMBA_CACHE))]


def written_paths(events: list[list]) -> list[str]:
    """The paths the recorded writes name (both of a rename)."""
    out = []
    for event, *args in events:
        count = 2 if event in ("os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.copytree",
                               "shutil.move") else 1
        out += [os.path.abspath(a) for a in args[:count] if isinstance(a, str)]
    return out


READS = ("info", "metrics", "compare", "show")


@pytest.fixture(params=["directory", "export"])
def clean(request, tmp_path, clean_db) -> Path:
    """The clean database directory, or a file that ``export`` wrote of it."""
    if request.param == "directory":
        return clean_db
    from filterdb.store import open_database

    with open_database(clean_db) as db:
        return db.export(tmp_path / "export.h5")


def test_cold_caches_reads_write_only_inside_the_documented_caches(tmp_path, clean):
    events, changed = run_reads(tmp_path, clean, *READS, "draws")
    home = tmp_path / "filterdb-home"
    assert events, "computing the metrics of a cold database writes its cache"
    assert outside_caches(written_paths(events), clean, home) == []
    assert not [e for e in events if e[0] in ("fcntl.flock", "fcntl.lockf", "h5py.File")]
    assert outside_caches(changed, clean, home) == []
    if clean.is_dir():
        assert (clean / "metrics").is_dir() and (clean / "divergence").is_dir()
    else:
        (cache,) = [p for p in (home / "cache").iterdir() if p.name != "labelings"]  # <its digest>/
        assert (cache / "metrics").is_dir() and (cache / "divergence").is_dir()
    assert list((home / "cache" / "labelings").glob("*.draws"))


def test_warm_caches_reads_write_nothing_at_all(tmp_path, clean):
    run_reads(tmp_path, clean, *READS, "draws")  # warms every cache, as 'filterdb metrics' and a compare do
    events, changed = run_reads(tmp_path, clean, *READS, "draws")
    assert data_writes(events) == []
    assert changed == set()


def test_opening_a_clean_database_takes_no_lock_and_writes_nothing(tmp_path, clean_db):
    assert (clean_db / ".lock").exists()  # left by the build that wrote it
    events, changed = run_reads(tmp_path, clean_db, "open", "info")
    assert events == []
    assert changed == set()
