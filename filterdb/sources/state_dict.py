"""State dicts of the researcher's own models: find the weights in a checkpoint, load them strictly.

A checkpoint written by someone's training code keeps its weights at the top level or under
one of :data:`CONTAINERS` (``state_dict``, ``model``, ...), often with a prefix that
``DataParallel`` (``module.``), a wrapper (``model.``) or ``torch.compile`` (``_orig_mod.``)
added. :func:`read_weights` finds them without running code (``torch.load(weights_only=True)``,
safetensors through ``safetensors.torch.load_file``) and :func:`load_strict` fills an
architecture with them: every parameter and buffer, each of its shape, or a
``FilterDBError`` naming the first keys that do not fit, so that the filters of a randomly
initialised layer are never stored as trained ones.

:func:`file_kind` tells what a model file is from its bytes alone: a TorchScript archive and
a pickled whole module are code, which only ``--trust-code`` runs (``filterdb.sources.trusted``).
"""
from __future__ import annotations

import importlib
import json
import pickletools
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filterdb.errors import FilterDBError

if TYPE_CHECKING:
    from torch import nn

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
CONTAINERS = ("state_dict", "model_state_dict", "model", "net", "ema", "model_state")
PREFIXES = ("module.", "model.", "_orig_mod.")
SHOWN_KEYS = 4  # keys an error names before "and N more"


@dataclass
class Weights:
    tensors: dict  # name -> torch.Tensor, as stored
    where: str  # which part of the file held them: "top level", "state_dict", "ema", "safetensors"


def _torch_zip_entries(path: Path) -> list[str] | None:
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def file_kind(path: str | Path) -> str:
    """What a model file is, read without running it: 'onnx', 'safetensors', 'torchscript' or 'torch'
    (a torch.save file: a state dict, a checkpoint or a pickled module; ``read_weights`` tells which)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".safetensors":
        return "safetensors"
    names = _torch_zip_entries(path)
    if names is not None and any(n.split("/", 1)[-1] == "constants.pkl" or "/code/" in n or n.startswith("code/")
                                 for n in names):
        return "torchscript"
    return "torch"


def _pickle_globals(path: Path) -> list[str]:
    """The classes and functions a torch.save pickle references (read with pickletools: nothing runs)."""
    names = _torch_zip_entries(path)
    try:
        if names is not None:
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in names if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
        found, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "STRING", "SHORT_BINSTRING", "BINSTRING"):
                strings.append(arg)
            elif op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
        return found
    except Exception:  # noqa: BLE001 - a pickle that does not parse is reported by the load itself
        return []


def read_weights(path: str | Path) -> Weights:
    """The tensors of a state dict file and where in it they were; never runs code from the file."""
    path = Path(path)
    if not path.is_file():
        raise FilterDBError(f"{path}: no such file")
    kind = file_kind(path)
    if kind == "safetensors":
        from safetensors.torch import load_file
        try:
            return Weights(load_file(str(path), device="cpu"), "safetensors")
        except Exception as exc:  # noqa: BLE001
            raise FilterDBError(f"{path}: not a readable safetensors file ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if kind == "torchscript":
        raise code_refusal(path, "a TorchScript archive (its code/ holds the model's program)")
    import pickle

    import torch
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        module_classes = [g for g in _pickle_globals(path) if not g.startswith(("torch.", "collections.", "builtins."))]
        what = f"a pickled object of {module_classes[0]}" if module_classes else "a pickle that needs code to load"
        raise code_refusal(path, f"{what} (torch.save of a whole model, not a state dict)") from None
    except Exception as exc:  # noqa: BLE001
        raise FilterDBError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); copy it again") from None
    return find_state_dict(payload, str(path))


def code_refusal(path: Path, what: str) -> FilterDBError:
    return FilterDBError(f"{path}: {what} is code, and loading it runs that code; filterdb refuses it unless you "
                         "trust the file: pass --trust-code (or save a state dict and give --arch)")


def _is_state_dict(value: Any) -> bool:
    import torch
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def find_state_dict(payload: Any, label: str) -> Weights:
    """The state dict in a loaded checkpoint: the payload itself or one of ``CONTAINERS``."""
    if _is_state_dict(payload):
        return Weights(dict(payload), "top level")
    if isinstance(payload, dict):
        for key in CONTAINERS:
            if _is_state_dict(payload.get(key)):
                return Weights(dict(payload[key]), key)
        tensors = {k: v for k, v in payload.items() if _is_state_dict({k: v})}
        if tensors and len(tensors) >= len(payload) / 2:  # weights beside a few counters (epoch, step)
            return Weights(tensors, "top level")
        keys = ", ".join(repr(k) for k in list(payload)[:8])
        raise FilterDBError(f"{label}: no state dict at the top level nor under {', '.join(CONTAINERS)}; "
                            f"its keys: {keys}; save the model's state_dict() or one of those keys")
    raise FilterDBError(f"{label}: holds a {type(payload).__name__}, not a state dict; save model.state_dict()")


def _shown(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def strip_prefixes(tensors: dict, expected: set[str]) -> tuple[dict, str]:
    """The tensors with the prefix removed that makes most keys fit ``expected`` (repeatedly: a
    compiled DataParallel model has ``module._orig_mod.``), and the prefix removed ('' if none)."""
    removed = ""
    current = dict(tensors)
    while True:
        fits = sum(k in expected for k in current)
        best = None
        for prefix in PREFIXES:
            if any(k.startswith(prefix) for k in current):
                stripped = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in current.items()}
                score = sum(k in expected for k in stripped)
                if score > fits and (best is None or score > best[0]):
                    best = (score, prefix, stripped)
        if best is None:
            return current, removed
        _, prefix, current = best
        removed += prefix


def load_strict(model: nn.Module, weights: Weights, label: str, arch: str) -> str:
    """Fill ``model`` with ``weights``: every key, every shape, or ``FilterDBError`` (the model is
    left untouched). Returns the prefix that was stripped."""
    expected = model.state_dict()
    tensors, prefix = strip_prefixes(weights.tensors, set(expected))
    # Buffers torch adds and fills itself (BatchNorm's counter) may be absent from older checkpoints.
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in tensors and k not in optional]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} (file {tuple(tensors[k].shape)}, {arch} {tuple(expected[k].shape)})" for k in expected
             if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        tried = ", ".join(repr(p) for p in PREFIXES)
        parts = []
        if missing:
            parts.append(f"missing {_shown(missing)}")
        if unexpected:
            parts.append(f"unexpected {_shown(unexpected)}")
        if wrong:
            parts.append(f"shape mismatch {_shown(wrong)}")
        raise FilterDBError(f"{label}: the weights ({weights.where}) do not fit {arch}: {'; '.join(parts)} "
                            f"(prefixes tried: {tried}{'; stripped ' + repr(prefix) if prefix else ''}); "
                            "give the architecture these weights were trained with (--arch, --arch-kwargs)")
    model.load_state_dict({k: v for k, v in tensors.items()}, strict=False)
    return prefix


# ----------------------------------------------------------------------------- architectures

def import_factory(target: str) -> Callable[..., Any]:
    """``MODULE:CALLABLE`` (e.g. ``mypkg.models:wrn34_10``) imported; a one-line error if it is not there."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FilterDBError(f"--arch {target}: cannot import {module_name!r} ({exc}); put its folder on "
                            "PYTHONPATH or install it") from None
    factory: Any = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise FilterDBError(f"--arch {target}: {module_name} has no {attribute!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise FilterDBError(f"--arch {target}: {attribute} is not callable")
    return factory


def library_architecture(library: str, name: str, kwargs: dict) -> tuple[nn.Module, tuple[int, int, int]]:
    """A timm or torchvision architecture with random weights (nothing downloaded) and its input shape."""
    if library == "timm":
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import timm
        if not timm.is_model(name):
            raise FilterDBError(f"--arch timm:{name}: timm has no model {name!r}; 'timm.list_models()' lists them")
        model = timm.create_model(name, pretrained=False, **kwargs)
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
        c, h, w = (int(s) for s in size)
        return model, (c, h, w)
    import torchvision
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    except ValueError:
        raise FilterDBError(f"--arch torchvision:{name}: torchvision has no model {name!r}; "
                            "'torchvision.models.list_models()' lists them") from None
    return model, (3, 299, 299) if name == "inception_v3" else (3, 224, 224)


def parse_arch_kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FilterDBError(f"--arch-kwargs {text!r}: not JSON ({exc.msg}); give an object such as "
                            "'{\"num_classes\": 10}'") from None
    if not isinstance(value, dict):
        raise FilterDBError(f"--arch-kwargs {text!r}: give a JSON object such as '{{\"num_classes\": 10}}'")
    return value
