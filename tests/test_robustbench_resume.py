"""A RobustBench build killed with SIGKILL in the middle of a model, then rerun, loses nothing and duplicates nothing."""
import signal
import subprocess
import sys
import time

from test_robustbench import assert_filters_equal_checkpoint, write_checkpoint

from filterdb.store import open_database

MODELS = ["Wong2020Fast", "Sehwag2021Proxy_R18", "Rebuffi2021Fixing_R18_ddpm"]


def build_command(model_dir, db):
    models = [arg for name in MODELS for arg in ("--models", name)]
    return [sys.executable, "-c", "from filterdb.cli import main; main()", "build", "--leaderboard", "linf-cifar10",
            *models, "--offline", "--model-dir", str(model_dir), "--db", str(db)]


def kill_while_writing_second_shard(command, shards) -> None:
    """Start the build and SIGKILL it the moment a shard is being written after one is complete."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if shards.is_dir():
                names = [p.name for p in shards.iterdir()]
                if any(not n.startswith(".") for n in names) and any(n.startswith(".") for n in names):
                    break
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_killed_build_resumes_without_loss_or_duplicates(tmp_path):
    model_dir, db = tmp_path / "models", tmp_path / "db"
    files = {name: write_checkpoint(model_dir, name, seed) for seed, name in enumerate(MODELS)}
    kill_while_writing_second_shard(build_command(model_dir, db), db / "shards")

    with open_database(db) as opened:  # after the kill: opens, and whatever is listed is complete
        survived = list(opened.models["name"])
        assert 1 <= len(survived) < len(MODELS)
        for name in survived:
            assert_filters_equal_checkpoint(opened, name.rsplit("/", 1)[-1], files[name.rsplit("/", 1)[-1]])

    rerun = subprocess.run(build_command(model_dir, db), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(MODELS) - len(survived)} added, {len(survived)} already present, 0 failed" in rerun.stderr
    with open_database(db) as opened:
        assert sorted(opened.models["name"]) == sorted(f"cifar10/Linf/{n}" for n in MODELS)
        assert opened.models["model_id"].is_unique
        assert opened.layers.groupby("model_id")["layer_index"].apply(lambda s: s.is_unique).all()
        for name in MODELS:
            assert_filters_equal_checkpoint(opened, name, files[name])
        assert opened.filters("3x3").shape[0] == int(opened.layers.query("kernel == '3x3'")["n_filters"].sum())
    assert not [p for p in (db / "shards").iterdir() if p.name.startswith(".")]
