"""`filterdb build --scheduler ADDRESS` on a local Dask cluster: each worker writes its own shard."""
import pytest
from click.testing import CliRunner
from test_robustbench import assert_filters_equal_checkpoint, write_checkpoint

from filterdb.cli import main
from filterdb.store import open_database

PRESENT = ["Wong2020Fast", "Sehwag2021Proxy_R18"]
MISSING = "Rebuffi2021Fixing_R18_ddpm"


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local


def test_dask_build_writes_every_model_and_reports_failures(cluster, tmp_path):
    model_dir, db = tmp_path / "models", tmp_path / "db"
    files = {name: write_checkpoint(model_dir, name, seed) for seed, name in enumerate(PRESENT)}
    models = [arg for name in [*PRESENT, MISSING] for arg in ("-m", name)]
    args = ["build", "-l", "linf-cifar10", *models, "--offline", "--model-dir", str(model_dir), "--db", str(db),
            "--scheduler", cluster.scheduler_address]

    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "2 added, 0 already present, 1 failed" in out
    assert f"{MISSING}.pt is missing and --offline forbids" in out
    with open_database(db) as opened:
        assert sorted(opened.models["name"]) == sorted(f"cifar10/Linf/{n}" for n in PRESENT)
        for name in PRESENT:
            assert_filters_equal_checkpoint(opened, name, files[name])

    write_checkpoint(model_dir, MISSING, seed=9)
    rerun = CliRunner().invoke(main, args, catch_exceptions=False)
    assert rerun.exit_code == 0, rerun.output
    assert "1 added, 2 already present, 0 failed" in " ".join(rerun.output.split())

