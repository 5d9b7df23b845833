"""User errors of the CLI are one line and an exit code, found before the work starts:
the plot path, Ctrl-C at start-up, model names, a failed add into a new path; and the
comparison's machine output keeps counts as integers and names its groups."""
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_results import run
from torch import nn

from filterdb.build import add_module
from filterdb.store import FilterDB

FILTERDB = Path(sys.executable).parent / "filterdb"


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1))


@pytest.fixture
def small_db(tmp_path) -> Path:
    """Three robust and three normal three-layer models."""
    path = tmp_path / "db"
    with FilterDB.open(path, "a") as db:
        for i in range(6):
            training = "robust" if i % 2 else "normal"
            add_module(db, net(i), source="test", name=f"{training}-{i}", input_shape=(1, 8, 8),
                          record={"training": training, "architecture": "cnn3"})
    return path


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("plot, words", [
    ("no-such-dir/x.png", "the folder no-such-dir does not exist"),
    ("x.jpgg", ".jpgg is not an image format"),
    ("x", "no file extension"),
])
def test_compare_plot_path_is_refused_before_the_comparison(small_db, tmp_path, monkeypatch, plot, words):
    monkeypatch.chdir(tmp_path)
    result = run("compare", "robust", "normal", "--db", small_db, "--plot", plot)
    line = one_error_line(result, 1)
    assert words in line and plot in line
    assert not (small_db / "metrics").exists() or not any((small_db / "metrics").iterdir())  # no work was done


def test_compare_plot_into_an_existing_folder_is_written(small_db, tmp_path):
    out = tmp_path / "figs" / "c.png"
    out.parent.mkdir()
    result = run("compare", "robust", "normal", "--db", small_db, "--plot", out, "--permutations", 9,
                 "--no-divergence", "--metric", "ve_linf")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_a_group_with_itself_is_an_error_naming_a_baseline(small_db):
    line = one_error_line(run("compare", "normal", "normal", "--db", small_db), 1)
    assert "both groups are 'normal'" in line and "seed=" in line


def test_machine_output_names_the_groups_and_counts_in_integers(small_db):
    result = run("compare", "robust", "normal", "--db", small_db, "--permutations", 9, "--format", "json",
                 "--metric", "ve_linf", "--layer", "all")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("["):])
    tests, divergence = rows[0], rows[-1]
    assert (tests["group_a"], tests["group_b"]) == ("robust", "normal")
    assert tests["n_a"] == 3 and tests["n_b"] == 3 and isinstance(tests["n_a"], int)
    assert tests["n_permutations"] == 9 or tests["n_permutations"] == 20  # exact (C(6,3)) or random
    assert divergence["metric"] == "divergence" and divergence["models_a"] == 3 and divergence["n_a"] is None
    assert divergence["filters_a"] == 3 * (4 + 24 + 36)
    csv = run("compare", "robust", "normal", "--db", small_db, "--permutations", 9, "--format", "csv",
              "--metric", "ve_linf", "--layer", "all")
    frame = pd.read_csv(io.StringIO(csv.output[csv.output.index("group_a"):]))
    header, first = csv.output[csv.output.index("group_a"):].splitlines()[:2]
    assert ",3,3," in first  # n_a, n_b written as 3, not 3.0
    assert frame.loc[1, "filters_b"] == 3 * (4 + 24 + 36)


def test_deciles_groups_table_puts_the_first_layer_first(small_db):
    from filterdb.analysis.compare import compare_groups

    result = compare_groups(small_db, "robust", "normal", layer="deciles", permutations=9, with_divergence=False)
    layers = [str(v) for v in result.groups["layers"]]
    assert layers[:2] == ["0", "0"] and layers[-1] == "(0.9, 1]"
    assert list(result.groups["group"][:2]) == ["robust", "normal"]
    assert list(result.groups["models"]) == [3] * len(layers)


def test_models_names_the_family_and_suggests_near_names():
    assert run("models", "wrn28-10").output.startswith("wrn28-10: WideResNet-28-10, 36,479,194 parameters")
    assert run("models", "robustresnet-a1").output.startswith("robustresnet-a1: RobustResNet-A1, ")
    assert run("models", "preactresnet18").output.startswith("preactresnet18: PreActResNet-18, ")
    line = one_error_line(run("models", "resnet18"), 1)
    assert "unknown model 'resnet18'; did you mean" in line and "preactresnet18" in line and "resnet8-8" in line


def test_counterpart_dataset_defaults_to_the_robustbench_ids():
    from filterdb.cli.training import _robustbench_dataset

    assert _robustbench_dataset("Carmon2019Unlabeled", "Linf") == "cifar10"
    assert _robustbench_dataset("robustbench:cifar100/Linf/Anything", "Linf") == "cifar100"
    # The command itself: the error of a CIFAR-100 run without its data names cifar100, not digits.
    result = run("train", "counterpart", "cifar100/Linf/Rice2020Overfitting_PreActResNet18", "--epochs", 1,
                 "--no-progress")
    assert result.exit_code == 1 and "cifar100" in result.output.lower() and "digits" not in result.output, result.output
    line = one_error_line(run("train", "counterpart", "NoSuchModel2099", "--epochs", 1), 1)
    assert "NoSuchModel2099 is not in the Linf RobustBench model table" in line and "--dataset" in line


def test_failed_add_into_a_new_path_leaves_no_directory(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    target = tmp_path / "new-db"
    result = run("add", junk, "--db", target)
    assert result.exit_code == 1, result.output
    assert not target.exists()
    existing = tmp_path / "old-db"
    FilterDB.open(existing, "a").close()
    assert run("add", junk, "--db", existing).exit_code == 1
    assert (existing / "filterdb.h5").exists()  # a database that was there stays


def test_failed_build_into_a_new_path_leaves_no_directory(tmp_path):
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "junk.pt").write_bytes(b"not a checkpoint")
    target = tmp_path / "new-db"
    result = run("build", "--checkpoints", tmp_path / "ckpts", "--db", target)
    assert result.exit_code == 1, result.output
    assert not target.exists()


def _sigint_as_at_a_terminal() -> None:
    """In the child before exec: SIGINT back to its default action. A shell's background job (``cmd &``,
    as a CI script may run the suite) starts with SIGINT ignored, and a child inherits that: the signal
    is then lost (filterdb, rightly, installs no handler where SIGINT is ignored) and the command runs
    to the end with exit code 0."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_filterdb_and_wait_for_entry(args: list[str], env: dict) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    """Start the console script and return once it has imported ``filterdb.entry``: before that the
    interpreter itself is starting (site, the editable finder, the console script's ``import re``), where
    SIGINT gets Python's own traceback, not filterdb's handling. Import times (PYTHONPROFILEIMPORTTIME)
    on stderr say when; a thread drains stderr so that the child never blocks on a full pipe."""
    proc = subprocess.Popen([str(FILTERDB), *args], env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_at_a_terminal)
    lines: list[str] = []
    entered = threading.Event()

    def drain() -> None:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("import time:") and line.rstrip().endswith("| filterdb.entry"):
                entered.set()
        entered.set()  # stderr closed: the child is gone

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    assert entered.wait(60), "filterdb did not import filterdb.entry within 60 s"
    return proc, lines, reader


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path):
    """SIGINT while the console script imports torch (filterdb models loads it): one line, exit 130, at every
    moment of the start-up from filterdb's own entry point on (a KeyboardInterrupt inside an import was once
    swallowed by the import machinery, exit 0, or aborted torch's C++ start-up, exit -6, about one start-up
    in 40)."""
    env = {**os.environ, "FILTERDB_HOME": str(tmp_path)}
    signalled = 0
    for delay in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5):
        proc, err_lines, reader = _start_filterdb_and_wait_for_entry(["models", "wrn28-10"], env)
        time.sleep(delay)
        if proc.poll() is not None:
            proc.stdout.read()
            continue  # already done: nothing to interrupt at this delay
        proc.send_signal(signal.SIGINT)
        out = proc.stdout.read()  # stderr is the reader thread's
        proc.wait(timeout=60)
        reader.join(timeout=60)
        err = "".join(line for line in err_lines if not line.startswith("import time:"))
        signalled += 1
        assert proc.returncode == 130, (delay, proc.returncode, err)
        assert err.strip() == "interrupted", err
        assert "Traceback" not in out + err
    assert signalled, "filterdb models finished before any signal: the test interrupted nothing"


def test_ctrl_c_is_ignored_where_the_parent_ignores_it(tmp_path):
    """A parent that ignores SIGINT (nohup, a shell's background job) keeps it ignored: the command runs on."""
    env = {**os.environ, "FILTERDB_HOME": str(tmp_path)}
    proc = subprocess.Popen([str(FILTERDB), "models", "wrn28-10"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.startswith("wrn28-10: WideResNet-28-10, 36,479,194 parameters"), out


def test_pretrained_weights_without_network_fail_at_once_in_one_line(tmp_path):
    """No cached weights and a server that refuses: one line within seconds, no FutureWarning, no retries,
    and no database directory left behind."""
    env = {**os.environ, "FILTERDB_HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "TORCH_HOME": str(tmp_path / "torch"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("FILTERDB_OFFLINE", None)
    done = subprocess.run([str(FILTERDB), "add", "timm:resnet18", "--db", str(tmp_path / "db")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: timm:resnet18: pretrained weights are not in the local cache and 127.0.0.1:9 cannot "
                      "be reached (Connection refused); connect to the network once to fill the cache, or pass "
                      "--offline to use cached weights only"], done.stderr
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "Retry" not in done.stderr, done.stderr  # huggingface_hub logs each retry ("Retrying in 1s [Retry 1/5]")
    assert not (tmp_path / "db").exists()
    offline = subprocess.run([str(FILTERDB), "add", "timm:resnet18", "--db", str(tmp_path / "db"), "--offline"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert offline.returncode == 1 and "offline mode forbids downloading them" in offline.stderr


def test_the_console_script_starts_numpys_blas_on_one_thread_unless_the_user_chose():
    """OpenBLAS starting a thread per core cost every command ~0.1 s of CPU (filterdb.entry)."""
    from filterdb.entry import BLAS_THREAD_VARIABLES, default_blas_to_one_thread

    environ: dict[str, str] = {}
    default_blas_to_one_thread(environ)
    assert environ == {"OPENBLAS_NUM_THREADS": "1"}
    for name in BLAS_THREAD_VARIABLES:
        chosen = {name: "4"}
        default_blas_to_one_thread(chosen)
        assert chosen == {name: "4"}
    probe = ("from filterdb.entry import default_blas_to_one_thread; default_blas_to_one_thread(); import numpy; "
             "from threadpoolctl import threadpool_info; "
             "print([lib['num_threads'] for lib in threadpool_info() if lib['user_api'] == 'blas'])")
    env = {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARIABLES}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[1]", done.stdout
    env["OPENBLAS_NUM_THREADS"] = "2"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[2]", done.stdout
