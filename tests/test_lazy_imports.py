"""The read path (open, info, metrics from the cache, compare, export, figures) never imports
torch, robustbench, timm or dask; ``filterdb --help`` imports no numerics at all."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from filterdb.build import add_module
from filterdb.cli import COMMANDS, main
from filterdb.store import FilterDB

HEAVY = ("torch", "torchvision", "robustbench", "timm", "dask", "distributed")
ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env_home: Path) -> dict:
    """Run ``code`` in a fresh interpreter; it prints a JSON object as its last line."""
    env = {**os.environ, "FILTERDB_HOME": str(env_home), "PYTHONPATH": str(ROOT / "figures")}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def small_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("imports") / "db"
    with FilterDB.open(path, "a") as db:
        for i, training in enumerate(["robust", "normal", "robust", "normal"]):
            torch.manual_seed(i)
            add_module(db, nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)), source="test", name=f"m{i}",
                          input_shape=(1, 8, 8), record={"training": training, "dataset": "digits"})
    return path


def test_read_path_imports_no_torch(small_db, tmp_path):
    loaded = run_python(f"""
        import json, sys
        from filterdb import open_database
        from filterdb.cli import main
        db_path = {str(small_db)!r}
        with open_database(db_path) as db:
            row = db.layers.iloc[0]
            assert db.read_layer(row).shape == (8, 3, 3)
            assert db.filters("3x3")[0:8].shape == (8, 3, 3)
        for args in (["info", "--db", db_path], ["metrics", "--db", db_path],
                     ["compare", "robust", "normal", "--layer", "first", "--db", db_path],
                     ["export", {str(tmp_path / "out.h5")!r}, "--db", db_path],
                     ["info", "--db", {str(tmp_path / "out.h5")!r}],
                     ["compare", "robust", "normal", "--db", {str(tmp_path / "out.h5")!r}],
                     ["show", "m0", "0", "--db", db_path, "--npy", {str(tmp_path / "m0.npy")!r}],
                     ["pairs", "--select", "robust", "--db", db_path]):
            try:
                main(args, standalone_mode=False)
            except SystemExit as exc:
                assert not exc.code, args
        import metrics_by_depth, pca_basis, filter_grids, divergence_by_depth  # figures that read a database
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
    """, tmp_path)
    assert loaded == []
    assert (tmp_path / "out.h5").exists() and (tmp_path / "m0.npy").exists()


def test_help_imports_no_numerics(tmp_path):
    loaded = run_python("""
        import json, sys
        from filterdb.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "numpy", "pandas", "h5py"})))
    """, tmp_path)
    assert loaded == []


def test_contributed_commands_are_listed_with_their_own_help():
    ctx = click.Context(main)
    for name, (_, _, short_help) in COMMANDS.items():
        assert main.get_command(ctx, name).get_short_help_str(limit=1000) == short_help
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in [*COMMANDS, "info", "build"])
