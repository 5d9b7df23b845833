"""Every figure script writes a non-empty PNG and PDF from a small database, deterministically.

The database: random-weight digits CNNs (two matched robust/normal pairs) and one
3-channel pair (dataset cifar10, for the RGB filter path), stored from checkpoint files
so that the activation figure can attack them; and random-weight padding variants for
the padding figure: cnn3-8 padding variants trained for a moment on digits and
evaluated as ``filterdb evaluate`` does (on a few test images), then added to the database. All under a private
FILTERDB_HOME.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

from filterdb.build import add_module

FIGURES_DIR = Path(__file__).resolve().parents[1] / "figures"
SCRIPTS = ("metrics_by_depth", "divergence_by_depth", "pca_basis", "filter_grids", "first_stage_activation",
           "padding_perturbation")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular", "nopad")


def figure_module(name: str):
    if str(FIGURES_DIR) not in sys.path:
        sys.path.insert(0, str(FIGURES_DIR))
    return importlib.import_module(name)


def random_checkpoint(path: Path, model_string: str, dataset: str, in_chans: int, seed: int, shrink: float = 1.0) -> torch.nn.Module:
    from filterdb.training import create_model
    from filterdb.training.checkpoint import wrap_state_dict

    torch.manual_seed(seed)
    model = create_model(model_string, num_classes=10, in_chans=in_chans).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.mul_(shrink)
                module.weight[::3] = 0  # some dead filters, so that sparsity is not 0
    size = 8 if dataset == "digits" else 32
    wrap_state_dict(model.state_dict(), path, model_string, dataset, 10, (in_chans, size, size),
                    method="standard" if shrink == 1.0 else "pgd", metrics={"clean_acc": 10.0})
    return model


def quick_checkpoint(path: Path, model_string: str, seed: int) -> None:
    """A digits model trained for a moment (full-batch Adam), so that attacks fool some images."""
    from filterdb.training import create_model, load_dataset
    from filterdb.training.checkpoint import wrap_state_dict
    from filterdb.training.data import to_float

    data = load_dataset("digits", "train")
    x = to_float(torch.stack([data[i][0] for i in range(len(data))]))
    y = torch.as_tensor([int(data[i][1]) for i in range(len(data))])
    torch.manual_seed(seed)
    model = create_model(model_string, num_classes=10, in_chans=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(25):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    wrap_state_dict(model.eval().state_dict(), path, model_string, "digits", 10, (1, 8, 8), metrics={"clean_acc": 0.0})


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A FILTERDB_HOME with a small database, the models' checkpoints and padding variants."""
    from filterdb import paths
    from filterdb.store import FilterDB
    from filterdb.training.evaluation import evaluate_checkpoint
    from filterdb.training.evaluation_config import EvaluationConfig

    root = tmp_path_factory.mktemp("figure-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("FILTERDB_HOME", str(root))  # module scope: the per-test home of conftest is set later
    checkpoints = paths.demo_checkpoint_dir()
    models = [("digits", "cnn3-8", 1, s) for s in (0, 1)] + [("cifar10", "cnn2-4", 3, 2)]
    with FilterDB.open(root / "db", "a") as db:
        for dataset, model_string, in_chans, seed in models:
            for role, shrink in (("normal", 1.0), ("pgd", 0.3)):
                name = f"{model_string}-s{seed}"
                path = checkpoints / name / role / "last.pt"
                model = random_checkpoint(path, model_string, dataset, in_chans, seed + (10 if shrink != 1 else 0), shrink)
                size = 8 if dataset == "digits" else 32
                add_module(db, model, source="test", name=f"{dataset}/{name}/{role}", input_shape=(in_chans, size, size),
                              weights_path=path, record={"training": "normal" if role == "normal" else "robust",
                                                         "dataset": dataset, "architecture": model_string,
                                                         "model_string": model_string, "eps": 0.1})
    padding_models = figure_module("padding_models")
    evaluation = EvaluationConfig(**{**padding_models.EVALUATION, "n_samples": 48})
    for seed, mode in enumerate(PADDING_MODES):
        path = padding_models.default_models_dir() / mode / "last.pt"
        quick_checkpoint(path, f"cnn3-8_{mode}", seed)
        evaluate_checkpoint(path, evaluation)
    padding_models.store(padding_models.default_models_dir(), root / "db")  # evaluated models for the padding figure
    yield root
    patch.undo()


@pytest.fixture(autouse=True)
def figure_home(isolated_home, home, monkeypatch):
    """Every test of this module runs with the module's FILTERDB_HOME instead of conftest's empty one."""
    monkeypatch.setenv("FILTERDB_HOME", str(home))
    return home


def assert_images(paths: list[Path], min_side: int = 200) -> None:
    assert sorted(p.suffix for p in paths) == [".pdf", ".png"]
    for path in paths:
        assert path.is_file() and path.stat().st_size > 1000, path
    png = next(p for p in paths if p.suffix == ".png")
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min(image.shape[:2]) >= min_side, image.shape
    assert float(image[..., :3].std()) > 0.01, "the image is blank"
    assert next(p for p in paths if p.suffix == ".pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_writes_png_and_pdf(home, tmp_path, name):
    argv = ["--db", str(home / "db"), "--out", str(tmp_path)]
    if name in ("filter_grids", "first_stage_activation"):
        argv += ["--robust", "digits/cnn3-8-s0/pgd", "--normal", "digits/cnn3-8-s0/normal"]
    paths = figure_module(name).main(argv)
    assert [p.name for p in paths] == [f"{name}.png", f"{name}.pdf"]
    assert_images(paths)


def test_filter_grids_draws_rgb_first_layers(home, tmp_path):
    paths = figure_module("filter_grids").main(["--db", str(home / "db"), "--out", str(tmp_path),
                                                "--robust", "cifar10/cnn2-4-s2/pgd", "--normal", "cifar10/cnn2-4-s2/normal"])
    assert_images(paths)


def test_metrics_by_depth_has_a_column_per_dataset(home, tmp_path):
    module = figure_module("metrics_by_depth")
    from filterdb.store import open_database
    with open_database(home / "db") as db:
        long = module.model_means(db)
    assert set(long["dataset"]) == {"digits", "cifar10"}
    assert set(long["metric"]) == set(module.METRICS)
    assert long["position"].min() == 0  # the first layer


def test_output_is_deterministic(home, tmp_path):
    module = figure_module("pca_basis")
    first = module.main(["--db", str(home / "db"), "--out", str(tmp_path / "a")])
    second = module.main(["--db", str(home / "db"), "--out", str(tmp_path / "b")])
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_make_all_writes_every_figure(home, tmp_path):
    written = figure_module("make_all").main(["--db", str(home / "db"), "--out", str(tmp_path)])
    assert sorted(p.name for p in written) == sorted(f"{n}.{ext}" for n in SCRIPTS for ext in ("png", "pdf"))


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no filter database"):
        figure_module("pca_basis").main(["--db", str(tmp_path / "nowhere"), "--out", str(tmp_path)])


def test_a_database_without_robust_models_is_a_clear_error(home, tmp_path):
    from filterdb.store import FilterDB
    from filterdb.training import create_model

    with FilterDB.open(tmp_path / "db", "a") as db:
        add_module(db, create_model("cnn2-4", num_classes=10, in_chans=1), source="test", name="only-normal",
                      input_shape=(1, 8, 8), record={"training": "normal", "dataset": "digits"})
    for name in ("metrics_by_depth", "divergence_by_depth", "pca_basis", "filter_grids"):
        with pytest.raises(SystemExit, match="robust"):
            figure_module(name).main(["--db", str(tmp_path / "db"), "--out", str(tmp_path / "out")])


def test_padding_figure_reads_evaluation_results(home, tmp_path):
    """The figure reads a database's evaluation_json: several models of one mode are averaged; unevaluated
    ones are left out; the key is chosen."""
    import shutil

    from filterdb.evaluation_files import evaluation_path, maps_path
    from filterdb.training.evaluation import evaluate_checkpoint
    from filterdb.training.evaluation_config import EvaluationConfig

    module = figure_module("padding_perturbation")
    padding_models = figure_module("padding_models")
    source = padding_models.default_models_dir()
    models = tmp_path / "models"
    shutil.copytree(source, models)
    shutil.copytree(source / "zeros", models / "zeros-seed1")  # a second zeros model
    (models / "circular" / "last.pt").rename(models / "circular" / "unevaluated.pt")  # results no longer match it
    evaluation = EvaluationConfig(**{**padding_models.EVALUATION, "n_samples": 48})
    for path in models.rglob("last.pt"):  # the copies' results name the copies
        evaluate_checkpoint(path, evaluation)
    db = tmp_path / "db"
    padding_models.store(models, db)
    results = module.load_results(db)
    assert sorted(r["mode"] for r in results) == ["nopad", "reflect", "replicate", "zeros", "zeros"]
    key = module.choose_key(results, None, None)
    assert key == padding_models.KEY
    modes = module.by_mode([module.per_model(r, key, 1) for r in results], 1)
    assert list(modes) == ["zeros", "reflect", "replicate", "nopad"] and modes["zeros"]["n_models"] == 2
    assert all(m["map"].shape == (8, 8) for m in modes.values())
    paths = module.main(["--db", str(db), "--out", str(tmp_path / "out"), "--budget", "L2:1"])
    assert_images(paths)
    with pytest.raises(SystemExit, match="no attack and budget"):
        module.main(["--db", str(db), "--out", str(tmp_path / "out"), "--budget", "Linf:8/255"])
    for path in models.rglob("*.pt"):
        evaluation_path(path).unlink(missing_ok=True)
        maps_path(path).unlink(missing_ok=True)
    with pytest.raises(SystemExit, match="no evaluated checkpoints"):
        module.main(["--db", str(db), "--out", str(tmp_path / "out")])
