"""RobustBench's model zoo as leaderboards: ``filterdb build --leaderboard linf-cifar10``, and
one model by its id: ``filterdb add robustbench:cifar10/Linf/Standard``.

The models a leaderboard lists and their leaderboard facts (paper, architecture,
accuracies, eps) come from the project's table ``filterdb/data/robustbench_models.csv``
(regenerate it with ``filterdb/data/refresh_robustbench.py``), so listing is cheap.
Weights come through robustbench's own loader and cache: ``load_model`` reads
``<model_dir>/<dataset>/<threat_model>/<name>.pt`` (ensembles: ``<name>.pt_m<i>.pt``).
A missing file is fetched first with robustbench's downloader into a temporary name and
renamed into place, so a killed download never leaves a file robustbench would trust;
a present file is never fetched again. Offline, a missing file is an error before
robustbench is called, and models whose constructor fetches pretrained weights
(timm / torchvision ``pretrained=True``) are refused.
"""
from __future__ import annotations

import functools
import inspect
import os
import re
import threading
import types
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch import nn

from filterdb import paths
from filterdb.atomic import atomic_path
from filterdb.compat import import_robustbench
from filterdb.errors import FilterDBError
from filterdb.integrity import sha256_file
from filterdb.sources import Leaderboard
from filterdb.sources.base import LoadedModel, ModelSpec

SOURCE = "robustbench"
TABLE = Path(__file__).resolve().parents[1] / "data" / "robustbench_models.csv"
INPUT_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "imagenet": (3, 224, 224)}
RECORD_COLUMNS = ("dataset", "threat_model", "architecture", "training", "training_method", "eps", "clean_acc",
                  "robust_acc", "robust_attack", "extra_data", "paper", "venue", "paper_url")
# name -> (dataset, threat model, convolutional models only)
BOARDS = {
    "linf-cifar10": ("cifar10", "Linf", False),
    "linf-cifar100": ("cifar100", "Linf", False),
    "linf-imagenet": ("imagenet", "Linf", False),
    "l2-cifar10": ("cifar10", "L2", False),
    "corruptions-cifar10": ("cifar10", "corruptions", True),
    "corruptions-cifar100": ("cifar100", "corruptions", True),
    "corruptions-imagenet": ("imagenet", "corruptions", True),
}


@functools.cache
def model_table() -> pd.DataFrame:
    """The leaderboard facts of every model in robustbench's zoo, one row per (dataset, threat model, name)."""
    table = pd.read_csv(TABLE, keep_default_na=False, na_values={c: [""] for c in ("eps", "clean_acc", "robust_acc")},
                        dtype={"extra_data": bool, "convolutional": bool, "ensemble_files": int})
    return table


def datasets_of(name: str, threat_model: str) -> list[str]:
    """The datasets whose RobustBench leaderboard of this threat model lists ``name`` (in table order)."""
    table = model_table()
    rows = table[(table["name"] == name) & (table["threat_model"].str.lower() == threat_model.lower())]
    return list(dict.fromkeys(rows["dataset"]))


def board_models(board: str) -> pd.DataFrame:
    dataset, threat, convolutional_only = BOARDS[board]
    table = model_table()
    rows = table[(table["dataset"] == dataset) & (table["threat_model"] == threat)]
    return rows[rows["convolutional"]] if convolutional_only else rows


def weight_files(model_dir: str | os.PathLike, dataset: str, threat: str, name: str, n_files: int) -> list[Path]:
    """Where robustbench keeps a model's weights: one file, or one per ensemble member."""
    base = Path(model_dir) / dataset / threat / f"{name}.pt"
    return [base] if n_files == 1 else [Path(f"{base}_m{i}.pt") for i in range(n_files)]


def specs(board: str, *, offline: bool = False, keep_weights: bool = True,
          model_dir: str | os.PathLike | None = None, **_options) -> list[ModelSpec]:
    """The specs of one leaderboard, in the zoo's order; loading goes through robustbench."""
    loader = _loader(model_dir, offline, keep_weights)
    return [_spec(row, loader) for row in board_models(board).to_dict(orient="records")]


def spec_for_id(model_id: str, *, offline: bool = False, keep_weights: bool = True,
                model_dir: str | os.PathLike | None = None) -> ModelSpec:
    """The spec of one published model, ``<dataset>/<threat model>/<name>`` as in
    ``filterdb add robustbench:cifar10/Linf/Standard`` (dataset and threat model in any case)."""
    parts = model_id.split("/")
    if len(parts) != 3 or not all(parts):
        raise FilterDBError(f"robustbench:{model_id}: expected robustbench:<dataset>/<threat model>/<name>, "
                            "e.g. robustbench:cifar10/Linf/Standard")
    dataset, threat, name = parts
    table = model_table()
    rows = table[(table["dataset"].str.lower() == dataset.lower())
                 & (table["threat_model"].str.lower() == threat.lower()) & (table["name"] == name)]
    if rows.empty:
        boards = [b for b, (d, t, _) in BOARDS.items() if (d, t.lower()) == (dataset.lower(), threat.lower())]
        where = f"'filterdb leaderboards {boards[0]}' lists its models" if boards else \
            f"RobustBench has no {dataset}/{threat} leaderboard here ('filterdb leaderboards' lists them)"
        raise FilterDBError(f"robustbench:{model_id} is not in RobustBench's model table; {where}")
    return _spec(rows.iloc[0].to_dict(), _loader(model_dir, offline, keep_weights))


def _loader(model_dir: str | os.PathLike | None, offline: bool, keep_weights: bool) -> Loader:
    return Loader(os.fspath(model_dir or paths.robustbench_model_dir()), offline, keep_weights)


def _spec(row: dict, loader: Loader) -> ModelSpec:
    record = {c: row[c] for c in RECORD_COLUMNS}
    record["extra_data"] = bool(record["extra_data"])
    return ModelSpec(SOURCE, f"{row['dataset']}/{row['threat_model']}/{row['name']}", record=record, load=loader)


def zoo_entry(dataset: str, threat: str, name: str) -> dict:
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        return model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][name]
    except (KeyError, ValueError) as exc:
        raise FilterDBError(f"robustbench:{dataset}/{threat}/{name} is not in the installed robustbench's model zoo; "
                            "regenerate filterdb/data/robustbench_models.csv for this robustbench version") from exc


def fetches_pretrained_weights(dataset: str, threat: str, name: str, entry: dict) -> bool:
    """Whether building the model downloads weights outside robustbench's cache (timm / torchvision)."""
    import timm

    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}"
    if timm.is_model(timm_name):  # robustbench's load_model then hands the model to timm's hub
        return True
    try:
        source = inspect.getsource(entry["model"])
    except (OSError, TypeError):
        return False
    return "pretrained=True" in source


def input_shape(dataset: str, entry: dict) -> tuple[int, int, int]:
    """The input the model is evaluated on: the size its RobustBench preprocessing ends with
    ('Crop288' -> 288 for Wong2020Fast, 'Res256Crop224' -> 224), else its dataset's."""
    size = re.search(r"(\d+)$", entry.get("preprocessing") or "")
    return (3, int(size.group(1)), int(size.group(1))) if size else INPUT_SHAPES[dataset]


def ensemble_members(model: nn.Module) -> list[nn.Module]:
    """The separately trained networks under one id (each ensemble member), or the model itself."""
    members = getattr(model, "models", None)
    if isinstance(members, nn.ModuleList) and not hasattr(model, "policy_net"):
        return list(members)  # Chen2020Adversarial, the CARD decks: averaged members
    standard, robust = getattr(model, "std_model", None), getattr(model, "rob_model", None)
    if isinstance(standard, nn.Module) and isinstance(robust, nn.Module):
        return [standard, robust]  # MixedNUTS: a standard and a robust network
    return [model]


def delete_files(files: list[Path]) -> None:
    for path in files:
        path.unlink(missing_ok=True)


_download_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def ensure_downloaded(path: Path, gdrive_id: str) -> None:
    """Fetch one weights file with robustbench's downloader unless present; atomically, so that a killed
    download never leaves a truncated file that robustbench would take for a complete one."""
    with _locks_guard:
        lock = _download_locks.setdefault(path, threading.Lock())
    with lock:  # a prefetch of the same file in another thread finishes first
        if path.is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial:
            import_robustbench().utils.download_gdrive_new(gdrive_id, partial)
            if not partial.is_file():
                raise FilterDBError(f"downloading {path.name} (gdrive id {gdrive_id}) produced no file")
            if looks_like_html(partial):
                raise FilterDBError(f"Google Drive sent a web page instead of {path.name} (gdrive id {gdrive_id}; "
                                    "quota exceeded or confirmation needed); try again later")


def looks_like_html(path: Path) -> bool:
    """A failed Google Drive download saves an HTML page under the checkpoint's name."""
    with open(path, "rb") as fh:
        return fh.read(64).lstrip().startswith(b"<")


@dataclass(frozen=True)
class Loader:
    """``spec.load`` of the robustbench leaderboards (a picklable object, so --jobs and Dask can ship it)."""
    model_dir: str
    offline: bool
    keep_weights: bool

    def __call__(self, spec: ModelSpec) -> LoadedModel:
        return load(spec, model_dir=self.model_dir, offline=self.offline, keep_weights=self.keep_weights)

    def prefetch(self, spec: ModelSpec) -> None:
        """Download the spec's weights ahead of its load (the build calls it while extracting another model)."""
        if self.offline:
            return
        dataset, threat, name = spec.name.split("/", 2)
        entry = zoo_entry(dataset, threat, name)
        if not fetches_pretrained_weights(dataset, threat, name, entry):
            for path, gdrive_id in zip(weight_files(self.model_dir, dataset, threat, name, n_weight_files(entry)),
                                       gdrive_ids(entry)):
                ensure_downloaded(path, gdrive_id)


def n_weight_files(entry: dict) -> int:
    return len(gdrive_ids(entry))


def gdrive_ids(entry: dict) -> list[str]:
    ids = entry["gdrive_id"]
    return list(ids) if isinstance(ids, list) else [ids]


def load(spec: ModelSpec, *, model_dir: str, offline: bool, keep_weights: bool) -> LoadedModel:
    """Load one zoo model through robustbench's ``load_model``; missing weights are downloaded first unless offline."""
    dataset, threat, name = spec.name.split("/", 2)
    entry = zoo_entry(dataset, threat, name)
    n_files = n_weight_files(entry)
    external = fetches_pretrained_weights(dataset, threat, name, entry)
    files = [] if external else weight_files(model_dir, dataset, threat, name, n_files)
    if offline:
        if external:
            raise FilterDBError(f"{spec.key}: robustbench builds this model with pretrained weights that "
                                "timm/torchvision download (pretrained=True); it cannot be built with --offline")
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise FilterDBError(f"{spec.key}: weights file {', '.join(missing)} is missing and --offline forbids "
                                "downloading it; place it there or build without --offline")
    else:
        try:
            for path, gdrive_id in zip(files, gdrive_ids(entry)):
                ensure_downloaded(path, gdrive_id)
        except Exception as exc:  # noqa: BLE001 - network, quota or Google Drive errors
            raise FilterDBError(f"{spec.key}: downloading its weights into {files[0].parent} failed "
                                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''})"
                                ) from exc
    rb_utils = import_robustbench().utils
    load_weights_only(rb_utils)
    try:
        model = rb_utils.load_model(name, model_dir=model_dir, dataset=dataset, threat_model=threat)
    except Exception as exc:  # noqa: BLE001 - a corrupt or mismatched file: say which, briefly
        text = str(exc).splitlines()[0] if str(exc) else ""
        where = f" from {files[0].parent}" if files else ""
        html = [p.name for p in files if p.is_file() and looks_like_html(p)]
        hint = f"; {', '.join(html)} is a web page from a failed download: delete it and rerun" if html else ""
        raise FilterDBError(f"{spec.key}: robustbench could not load the model{where} "
                            f"({type(exc).__name__}: {text[:300]}){hint}") from exc
    record = {}
    if n_files > 1:  # one sha256 per member file, in member order
        record["weights_sha256"] = ",".join(sha256_file(p) for p in files)
    return LoadedModel(spec, ensemble_members(model), input_shape(dataset, entry),
                       weights_path=files[0] if n_files == 1 and files else None, record=record,
                       cleanup=None if keep_weights or not files else functools.partial(delete_files, files))


class _WeightsOnlyTorch(types.ModuleType):
    """What ``robustbench.utils`` sees as ``torch``: torch itself, except that ``load`` always passes
    ``weights_only=True``. Weights that are not ours are never unpickled as code, whatever torch's
    default (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` gives way to an explicit argument)."""

    def __getattr__(self, name):
        import torch
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, **kwargs):
        import torch
        kwargs["weights_only"] = True
        return torch.load(f, *args, **kwargs)


def load_weights_only(rb_utils: types.ModuleType) -> None:
    """Route robustbench's ``torch.load`` calls (``load_model``, single and ensemble files) through weights_only."""
    if not isinstance(getattr(rb_utils, "torch"), _WeightsOnlyTorch):  # noqa: B009 (an untyped module's global)
        setattr(rb_utils, "torch", _WeightsOnlyTorch("torch"))  # noqa: B010


def _description(board: str) -> str:
    dataset, threat, convolutional_only = BOARDS[board]
    what = "convolutional models" if convolutional_only else "models"
    return f"RobustBench {threat} {dataset}: the zoo's {what}"


LEADERBOARDS = {board: Leaderboard(board, _description(board), functools.partial(specs, board)) for board in BOARDS}
