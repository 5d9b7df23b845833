"""Training checkpoints: self-describing, resumable, written atomically.

A checkpoint is one ``torch.save`` file holding a plain dict (loadable with
``torch.load(weights_only=True)``; no pickled classes)::

    format            "filterdb-training-checkpoint"
    format_version    "1.0"
    model_string      canonical model string, e.g. "cnn4-16" (create_model builds it)
    dataset           "digits", "cifar10", ...
    num_classes, in_chans, input_shape (C, H, W)
    method            "standard", "fgsm", "pgd", "trades", "mart" or "cusp"
    attack            the training attack's parameters (dict; None for standard)
    method_params     beta (TRADES/MART), CuSP final budgets and milestones
    selection         the checkpoint-selection rule: "last", "best-clean" or "best-robust"
    selected          True for the run's result (the checkpoint the rule selected, evaluated on the
                      test split); False for an unfinished run's last.pt, or last.pt beside best.pt
    metrics           clean_acc, robust_acc (percent, test split), robust_attack ("pgd-10"),
                      robust_attack_params (dict), threat_model, eps, split, epoch
    versions          filterdb, torch, python
    epoch             epochs completed
    history           one dict per epoch (lr, train loss/acc, budgets, val accuracies, data-order digest)
    pairing           seed, init_sha256 (initial weights), data_seed, pair and role for matched pairs
    config            the full training configuration
    model_state       the network's state dict (CPU tensors, no DDP/compile prefixes)
    train_state       optimizer, scheduler, scaler, rng (torch, cuda, numpy, python),
                      curriculum, data_order, best score: what resuming needs
"""
from __future__ import annotations

import math
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from filterdb.atomic import atomic_path
from filterdb.errors import FilterDBError
from filterdb.training.attacks import NORMS
from filterdb.training.methods import METHODS
from filterdb.versions import TOOL_VERSION, check_readable

FORMAT = "filterdb-training-checkpoint"
FORMAT_VERSION = "1.0"


def versions() -> dict:
    return {"filterdb": TOOL_VERSION, "torch": str(torch.__version__), "python": platform.python_version()}


def save_atomic(payload: dict, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then publish it durably (``filterdb.atomic``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
    return path


@dataclass
class Checkpoint:
    path: Path
    model_string: str
    dataset: str
    num_classes: int
    in_chans: int
    input_shape: tuple[int, int, int]
    method: str
    attack: dict | None
    metrics: dict
    versions: dict
    selection: str = "last"
    selected: bool = False
    epoch: int = 0
    method_params: dict = field(default_factory=dict)
    pairing: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    payload: dict = field(default_factory=dict, repr=False)

    @property
    def state_dict(self) -> dict:
        return self.payload["model_state"]

    @property
    def robust(self) -> bool:
        return self.method != "standard"

    def build_model(self) -> nn.Module:
        """The network with the checkpoint's weights, in eval mode on the CPU."""
        from filterdb.training.registry import create_model
        try:
            model = create_model(self.model_string, num_classes=self.num_classes, in_chans=self.in_chans)
        except ValueError as exc:
            raise FilterDBError(f"{self.path}: cannot build its model {self.model_string!r}: {exc}") from None
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())
            if len(detail) > 300:
                detail = detail[:300] + "..."
            raise FilterDBError(f"{self.path}: its weights do not fit the architecture {self.model_string!r} "
                                f"({detail}); the checkpoint's model string names another architecture") from None
        return model.eval()


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FilterDBError(f"{path}: no such checkpoint file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure is reported the same way, by kind
        if magic.startswith(b"PK") and not zipfile.is_zipfile(path):
            raise FilterDBError(f"{path}: truncated or corrupt checkpoint (the archive is incomplete); "
                                f"copy it again or retrain it") from None
        if magic.startswith(b"PK"):
            raise FilterDBError(f"{path}: cannot read this PyTorch file ({type(exc).__name__}); it is not a "
                                f"filterdb training checkpoint or is corrupt; retrain it with 'filterdb train'") from None
        raise FilterDBError(f"{path}: not a PyTorch checkpoint; give a .pt file written by 'filterdb train'") from None
    if not isinstance(payload, dict):
        raise FilterDBError(f"{path}: not a filterdb training checkpoint (it holds a {type(payload).__name__}); "
                            f"give a .pt file written by 'filterdb train'")
    if payload.get("format") != FORMAT:
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            raise FilterDBError(f"{path}: a bare state dict without a model string; filterdb cannot tell its "
                                f"architecture: give it with --arch (filterdb add {path} --arch ARCH, e.g. torchvision:resnet18 or "
                                f"a filterdb model string)")
        raise FilterDBError(f"{path}: not a filterdb training checkpoint (no format '{FORMAT}'); "
                            f"give a .pt file written by 'filterdb train'")
    check_readable(payload.get("format_version", FORMAT_VERSION), FORMAT_VERSION, f"{path}: checkpoint format")
    if not payload.get("model_string"):
        raise FilterDBError(f"{path}: checkpoint without a model string, so its architecture is unknown; "
                            f"retrain it with 'filterdb train' or set 'model_string' in the checkpoint")
    if "model_state" not in payload:
        raise FilterDBError(f"{path}: checkpoint without weights ('model_state' missing); retrain it")
    return payload


SELECTIONS = ("last", "best-clean", "best-robust")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _one_of(choices: tuple[str, ...]):
    return (lambda v: isinstance(v, str) and v in choices), f"one of {', '.join(choices)}"


_TEXT = (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")
_STR = (lambda v: isinstance(v, str), "a string")
_BOOL = (lambda v: isinstance(v, bool), "true or false")
_POSITIVE_INT = (lambda v: _is_int(v) and v >= 1, "an integer >= 1")
_COUNT = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
_INT = (_is_int, "an integer")
_NON_NEGATIVE = (lambda v: _is_number(v) and v >= 0, "a finite number >= 0")
_POSITIVE = (lambda v: _is_number(v) and v > 0, "a finite number > 0")
_PERCENT = (lambda v: _is_number(v) and 0 <= v <= 100, "a number from 0 to 100 (percent)")
_DICT = (lambda v: isinstance(v, dict), "a dict")
_SHAPE = (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_int(x) and x >= 1 for x in v),
          "three integers >= 1 (C, H, W)")
_HISTORY = (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, dict) for x in v), "a list of dicts (one per epoch)")
_VERSIONS = (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
             "a dict of version strings")
_STATE = (lambda v: isinstance(v, dict) and bool(v) and all(isinstance(k, str) and isinstance(x, torch.Tensor)
                                                            for k, x in v.items()),
          "a state dict (parameter names to tensors)")

# Required fields, then optional ones (absent or None: their default). Sub-fields of a dict field are
# optional too; None is accepted where the trainer writes None (an attack's step size, an accuracy
# not measured).
_REQUIRED = {"model_string": _TEXT, "dataset": _TEXT, "num_classes": _POSITIVE_INT, "in_chans": _POSITIVE_INT,
             "input_shape": _SHAPE, "method": _one_of(METHODS), "model_state": _STATE}
_OPTIONAL = {"attack": _DICT, "method_params": _DICT, "selection": _one_of(SELECTIONS), "selected": _BOOL,
             "metrics": _DICT, "versions": _VERSIONS, "epoch": _COUNT, "history": _HISTORY, "pairing": _DICT,
             "config": _DICT, "train_state": _DICT}
_SUB_FIELDS = {
    "attack": {"norm": _one_of(NORMS), "eps": _NON_NEGATIVE, "steps": _POSITIVE_INT, "step_size": _POSITIVE,
               "random_start": _BOOL, "restarts": _POSITIVE_INT, "loss": _STR},
    "method_params": {"beta": _NON_NEGATIVE, "cusp": _DICT},
    "metrics": {"clean_acc": _PERCENT, "robust_acc": _PERCENT, "robust_attack": _STR, "robust_attack_params": _DICT,
                "threat_model": _STR, "eps": _NON_NEGATIVE, "split": _STR, "n_eval": _COUNT, "epoch": _COUNT},
    "pairing": {"seed": _INT, "data_seed": _INT, "init_sha256": _STR, "pair": _STR, "role": _STR},
}
_NULLABLE = {"attack.step_size", "method_params.beta", "metrics.clean_acc", "metrics.robust_acc", "metrics.eps"}


def _shown(value) -> str:
    text = repr(value) if not isinstance(value, dict) or len(repr(value)) <= 60 else "{...}"
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} (a {type(value).__name__})"


def _bad(path: Path, name: str, value, expected: str) -> FilterDBError:
    return FilterDBError(f"{path}: checkpoint field '{name}' is {_shown(value)}; expected {expected}; "
                         f"correct the field or retrain with 'filterdb train'")


def check_fields(path: Path, payload: dict) -> None:
    """Every metadata field of a checkpoint has the type the format says (module docstring); the first
    that does not is a ``FilterDBError`` naming the file, the field and what was expected."""
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise FilterDBError(f"{path}: checkpoint lacks {', '.join(missing)}; retrain it with 'filterdb train'")
    for name, (ok, expected) in {**_REQUIRED, **_OPTIONAL}.items():
        value: Any = payload.get(name)
        if name in _OPTIONAL and value is None:
            continue
        if not ok(value):
            raise _bad(path, name, value, expected)
        for sub, (sub_ok, sub_expected) in _SUB_FIELDS.get(name, {}).items():
            full = f"{name}.{sub}"
            if sub in value and not (value[sub] is None and full in _NULLABLE) and not sub_ok(value[sub]):
                raise _bad(path, full, value[sub], sub_expected)
    if payload["input_shape"][0] != payload["in_chans"]:
        raise _bad(path, "input_shape", payload["input_shape"],
                   f"{payload['in_chans']} channels first, as 'in_chans' says")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by the trainer; ``FilterDBError`` naming the file if it is not one."""
    path = Path(path)
    p = _read(path)
    check_fields(path, p)
    c, h, w = p["input_shape"]
    return Checkpoint(path=path, model_string=p["model_string"], dataset=p["dataset"], num_classes=p["num_classes"],
                      in_chans=p["in_chans"], input_shape=(c, h, w), method=p["method"],
                      attack=p.get("attack"), metrics=dict(p.get("metrics") or {}), versions=dict(p.get("versions") or {}),
                      selection=p.get("selection") or "last", selected=bool(p.get("selected")), epoch=p.get("epoch") or 0,
                      method_params=dict(p.get("method_params") or {}), pairing=dict(p.get("pairing") or {}),
                      history=list(p.get("history") or []), config=dict(p.get("config") or {}), payload=p)


def wrap_state_dict(state_dict: dict, path: str | Path, model_string: str, dataset: str, num_classes: int,
                    input_shape: tuple[int, int, int], method: str = "standard", attack: dict | None = None,
                    metrics: dict | None = None) -> Path:
    """Write weights trained elsewhere as a (non-resumable) checkpoint that ``load_checkpoint`` reads."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_string": model_string, "dataset": dataset,
               "num_classes": num_classes, "in_chans": input_shape[0], "input_shape": list(input_shape),
               "method": method, "attack": attack, "method_params": {}, "selection": "last", "selected": True, "metrics": metrics or {},
               "versions": versions(), "epoch": 0, "history": [], "pairing": {}, "config": {},
               "model_state": {k: v.detach().cpu() for k, v in state_dict.items()}}
    return save_atomic(payload, path)
