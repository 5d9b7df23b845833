"""The researcher's own models: state dicts with an architecture, safetensors, ONNX, TorchScript,
pickled modules, one at a time or from a manifest CSV, with their model-table columns.

An architecture (``--arch``) is any form filterdb names: a filterdb model string
(``resnet20-16``), ``timm:NAME`` or ``torchvision:NAME`` (the architecture only, random
weights, nothing downloaded), ``robustbench:DATASET/THREAT/NAME`` (RobustBench's constructor,
random weights) or ``MODULE:CALLABLE``, an importable factory called with ``--arch-kwargs``.
A model's identity is ``local:NAME``, NAME the ``name`` column if set, else the file's stem
and the first 8 hex digits of its sha256: the same file added twice is one model.

This module sits at the top (beside the CLI) because architectures come from training's registry.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filterdb import schema
from filterdb.eps import parse_eps
from filterdb.errors import FilterDBError
from filterdb.integrity import sha256_file
from filterdb.sources.base import LoadedModel, ModelSpec, parse_input_shape

SOURCE = "local"
# Columns that extraction or the source fill: never set by hand.
COMPUTED = ("model_id", "key", "source", "n_params", "n_members", "input_shape", "n_layers", "n_filters",
            "skipped_convs", "weights_sha256", "tool_version", "extracted_at")
SETTABLE = tuple(c.name for c in schema.MODEL_COLUMNS if c.name not in COMPUTED)
CHOICES = {"training": ("robust", "normal"), "pair_role": ("normal", "robust"),
           "threat_model": ("Linf", "L2", "L1", "corruptions")}
DATASET_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32),
                  "svhn": (3, 32, 32), "tinyimagenet": (3, 64, 64), "imagenet": (3, 224, 224)}
# What `filterdb add` printed about each model it loaded: where the weights were, which prefix was stripped.
LOAD_NOTES: dict[str, str] = {}


# ----------------------------------------------------------------------------- columns

def parse_column(column: str, value: Any) -> Any:
    """A model-table value from text, checked against the column's type (and its choices)."""
    kinds = {c.name: c for c in schema.MODEL_COLUMNS}
    if column not in kinds or column in COMPUTED:
        raise FilterDBError(f"unknown column {column!r} for --set; valid: {', '.join(SETTABLE)}")
    kind = kinds[column].kind
    text = str(value).strip()
    if column == "eps":
        return parse_eps(text)
    if column in CHOICES:
        canonical = {c.lower(): c for c in CHOICES[column]}
        if text.lower() not in canonical:
            raise FilterDBError(f"{column}={text!r}: valid values are {', '.join(CHOICES[column])}")
        return canonical[text.lower()]
    if column == "dataset":
        return text.lower()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            number = float(text)
            if math.isnan(number):
                raise ValueError
            return number
        if kind == "bool":
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
    except ValueError:
        raise FilterDBError(f"{column}={text!r}: not {'an' if kind == 'int' else 'a'} {kind}"
                            f"{' (true or false)' if kind == 'bool' else ''}") from None
    if column == "name" and not text:
        raise FilterDBError("name='': give the model a name, or leave the column out")
    return text


def parse_sets(items: tuple[str, ...] | list[str]) -> dict:
    """``("training=robust", "eps=8/255")`` -> checked columns."""
    columns = {}
    for item in items:
        column, sep, value = item.partition("=")
        if not sep:
            raise FilterDBError(f"--set {item!r}: give COLUMN=VALUE; valid columns: {', '.join(SETTABLE)}")
        columns[column.strip()] = parse_column(column.strip(), value)
    return columns


def check_columns(columns: dict) -> dict:
    return {k: parse_column(k, v) for k, v in columns.items()}


# ----------------------------------------------------------------------------- architectures

@dataclasses.dataclass(frozen=True)
class Architecture:
    arch: str
    kwargs: dict

    def build(self):
        """The architecture with random weights, its default input shape and its model-table facts."""
        from filterdb.sources.pretrained import LIBRARIES, architecture
        from filterdb.sources.state_dict import import_factory, library_architecture

        arch, kwargs = self.arch, dict(self.kwargs)
        library, sep, name = arch.partition(":")
        if sep and library in LIBRARIES:
            model, shape = library_architecture(library, name, kwargs)
            return model, shape, {"architecture": architecture(name)}
        from filterdb.training import registry

        if arch.startswith(registry.ROBUSTBENCH_PREFIX):
            model = registry.create_model(arch, **kwargs)
            dataset = name.split("/")[0]
            return model, DATASET_SHAPES.get(dataset, (3, 32, 32)), {"model_string": arch}
        if sep and "/" not in arch:
            model = import_factory(arch)(**kwargs)
            from torch import nn
            if not isinstance(model, nn.Module):
                raise FilterDBError(f"--arch {arch}: the factory returned a {type(model).__name__}, not a "
                                    "torch.nn.Module")
            return model, None, {"architecture": name}
        try:
            spec = registry.parse_model_string(arch)
        except FilterDBError as exc:
            raise FilterDBError(f"--arch {arch}: {exc}; or give timm:NAME, torchvision:NAME, "
                                "robustbench:DATASET/THREAT/NAME or MODULE:CALLABLE") from None
        model = registry.create_model(arch, **kwargs)
        in_chans = int(kwargs.get("in_chans", 3))
        return model, (in_chans, 32, 32), {"model_string": str(spec), "architecture": str(spec).split("_")[0]}


def _input_shape(given: tuple[int, int, int] | None, columns: dict, default: tuple[int, int, int] | None,
                 label: str) -> tuple[int, int, int]:
    if given:
        return given
    if columns.get("dataset") in DATASET_SHAPES:
        return DATASET_SHAPES[columns["dataset"]]
    if default:
        return default
    raise FilterDBError(f"{label}: filterdb cannot tell the model's input shape; give --input-shape C,H,W "
                        "(or set dataset=...)")


# ----------------------------------------------------------------------------- loaders

@dataclasses.dataclass(frozen=True)
class StateDictLoader:
    path: Path
    arch: Architecture
    columns: dict
    input_shape: tuple[int, int, int] | None = None

    def __call__(self, spec: ModelSpec) -> LoadedModel:
        from filterdb.sources.state_dict import load_strict, read_weights

        weights = read_weights(self.path)  # before the architecture: a file that is code is refused first
        model, default, facts = self.arch.build()
        prefix = load_strict(model, weights, str(self.path), self.arch.arch)
        note = f"weights from {weights.where}" + (f", prefix {prefix!r} stripped" if prefix else "")
        LOAD_NOTES[spec.key] = note
        shape = _input_shape(self.input_shape, self.columns, default, str(self.path))
        return LoadedModel(spec, [model.eval()], shape, weights_path=self.path, record={**facts, **self.columns})


@dataclasses.dataclass(frozen=True)
class OnnxLoader:
    path: Path
    columns: dict
    input_shape: tuple[int, int, int] | None = None

    def __call__(self, spec: ModelSpec) -> LoadedModel:
        from filterdb.sources.onnx_model import read_onnx

        layers, facts = read_onnx(self.path, str(self.path))
        LOAD_NOTES[spec.key] = f"{len(layers)} Conv initializers read from the ONNX graph"
        shape: Any = self.input_shape or facts["input_shape"]  # () when unknown
        return LoadedModel(spec, [], shape, weights_path=self.path, layers=layers, n_params=facts["n_params"],
                           record={"skipped_convs": facts["skipped_convs"], **self.columns})


@dataclasses.dataclass(frozen=True)
class TrustedLoader:
    """A TorchScript archive or a pickled module: runs the file's code (only with --trust-code)."""
    path: Path
    kind: str  # "torchscript" or "pickle"
    columns: dict
    input_shape: tuple[int, int, int] | None = None

    def __call__(self, spec: ModelSpec) -> LoadedModel:
        from filterdb.sources import trusted

        label = str(self.path)
        if self.kind == "pickle":
            model = trusted.load_pickled_module(self.path)
            LOAD_NOTES[spec.key] = "pickled module loaded (--trust-code)"
            return LoadedModel(spec, [model], _input_shape(self.input_shape, self.columns, None, label), weights_path=self.path, record=dict(self.columns))
        from filterdb.extract import _layer

        convs, n_params = trusted.torchscript_convs(self.path, label)
        n = len(convs)
        layers = []
        for depth, (name, conv) in enumerate(convs):
            position = {"member": 0, "exec_order": depth, "conv_depth": depth,
                        "conv_depth_norm": depth / (n - 1) if n > 1 else 0.0}
            layer = _layer(conv, name, position, conv.weight.detach(), "probe_verified", label)
            layer.info["layer_index"] = depth
            layers.append(layer)
        LOAD_NOTES[spec.key] = "TorchScript archive loaded (--trust-code), convolutions probed"
        shape: Any = self.input_shape or ()  # no forward pass: '' when not given
        return LoadedModel(spec, [], shape, weights_path=self.path, layers=layers, n_params=n_params,
                           record=dict(self.columns))


@dataclasses.dataclass(frozen=True)
class WithColumns:
    """Any source's loader, with the user's columns over what the source knows."""
    load: Callable[[ModelSpec], LoadedModel]
    columns: dict

    def __call__(self, spec: ModelSpec) -> LoadedModel:
        loaded = self.load(spec)
        loaded.record = {**loaded.record, **self.columns}
        return loaded


def _refuse(path: Path, what: str):
    from filterdb.sources.state_dict import code_refusal

    def load(spec: ModelSpec) -> LoadedModel:
        raise code_refusal(path, what)
    return load


def is_pickled_module(path: Path) -> bool:
    """Whether a torch.save file references classes beyond torch's own (a pickled module), read without running it."""
    from filterdb.sources.state_dict import _pickle_globals

    return any(not g.startswith(("torch.", "collections.", "builtins.", "_codecs.", "numpy."))
               for g in _pickle_globals(path))


def own_spec(path: str | Path, arch: str | None = None, arch_kwargs: dict | None = None,
             columns: dict | None = None, input_shape: tuple[int, int, int] | None = None,
             trust_code: bool = False) -> ModelSpec:
    """The spec of a model file of the researcher's own (cheap: the file's digest, nothing loaded)."""
    from filterdb.sources.state_dict import STATE_DICT_SUFFIXES, file_kind

    path = Path(path)
    if not path.is_file():
        raise FilterDBError(f"{path}: no such file")
    columns = check_columns(dict(columns or {}))
    sha = sha256_file(path)
    name = columns.pop("name", None) or f"{path.stem}@{sha[:8]}"
    record = {"weights_sha256": sha}
    kind = file_kind(path)
    shape = parse_input_shape(input_shape, "input_shape")
    loader: Callable[[ModelSpec], LoadedModel]
    if kind == "onnx":
        loader = OnnxLoader(path, columns, shape)
    elif kind == "torchscript" or (kind == "torch" and arch is None and is_pickled_module(path)):
        what = "a TorchScript archive" if kind == "torchscript" else "a pickled whole model (torch.save(model))"
        loader = (TrustedLoader(path, "torchscript" if kind == "torchscript" else "pickle", columns, shape)
                  if trust_code else _refuse(path, what))
    elif arch is None:
        raise FilterDBError(f"{path}: a state dict needs its architecture: give --arch (a filterdb model string, "
                            "timm:NAME, torchvision:NAME, robustbench:DATASET/THREAT/NAME or MODULE:CALLABLE)")
    elif path.suffix.lower() not in STATE_DICT_SUFFIXES:
        raise FilterDBError(f"{path}: unknown file type {path.suffix!r}; state dicts are "
                            f"{', '.join(STATE_DICT_SUFFIXES)}, models .onnx")
    else:
        loader = StateDictLoader(path, Architecture(arch, dict(arch_kwargs or {})), columns, shape)
    return ModelSpec(SOURCE, name, record=record, load=loader, origin=str(path))


def spec_for_file(path: Path, *, arch: str | None, arch_kwargs: dict | None, columns: dict,
                  input_shape: tuple[int, int, int] | None, trust_code: bool) -> ModelSpec:
    """What ``filterdb add FILE`` adds: a filterdb training checkpoint when it is one (and no --arch
    is given), else the researcher's own file."""
    from filterdb.sources.state_dict import file_kind

    if arch is None and path.suffix.lower() == ".pt" and file_kind(path) == "torch" and not is_pickled_module(path):
        from filterdb.training.checkpoint_source import checkpoint_spec
        spec = checkpoint_spec(path)
        columns = check_columns(columns)
        if "name" in columns:
            spec = dataclasses.replace(spec, name=columns.pop("name"))
        assert spec.load is not None  # checkpoint_spec always gives its loader
        return dataclasses.replace(spec, load=WithColumns(spec.load, columns)) if columns else spec
    return own_spec(path, arch, arch_kwargs, columns, input_shape, trust_code)


# ----------------------------------------------------------------------------- manifests

MANIFEST_FIELDS = ("path", "arch", "arch_kwargs", "input_shape", "trust_code")


def manifest_specs(manifest: str | Path, *, trust_code: bool = False) -> tuple[list[ModelSpec], list[tuple[str, str]]]:
    """The specs of a manifest CSV's rows, and (row label, error) for the rows that cannot be read.

    Columns: ``path`` (relative to the manifest's folder), ``arch``, optionally ``arch_kwargs``
    (JSON), ``input_shape`` (C,H,W), ``trust_code`` and any model-table column; an empty cell is
    not set.
    """
    from filterdb.sources.state_dict import parse_arch_kwargs

    manifest = Path(manifest)
    if not manifest.is_file():
        raise FilterDBError(f"--manifest {manifest}: no such file")
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "path" not in fields:
            raise FilterDBError(f"--manifest {manifest}: no 'path' column; the header needs path, arch and any of "
                                f"{', '.join(SETTABLE)}")
        unknown = [f for f in fields if f not in MANIFEST_FIELDS and f not in SETTABLE]
        if unknown:
            raise FilterDBError(f"--manifest {manifest}: unknown column(s) {', '.join(unknown)}; valid: "
                                f"{', '.join(MANIFEST_FIELDS)}, {', '.join(SETTABLE)}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    specs, failures = [], []
    for line, row in enumerate(rows, start=2):
        label = f"{manifest.name}:{line} ({row.get('path', '')})"
        try:
            if not row.get("path"):
                raise FilterDBError("empty path")
            path = Path(row["path"])
            path = path if path.is_absolute() else manifest.parent / path
            columns = {k: v for k, v in row.items() if k in SETTABLE and v != ""}
            shape = parse_input_shape(row.get("input_shape") or None, "input_shape")
            trusted = trust_code or row.get("trust_code", "").lower() in ("1", "true", "yes")
            specs.append(spec_for_file(path, arch=row.get("arch") or None,
                                       arch_kwargs=parse_arch_kwargs(row.get("arch_kwargs")),
                                       columns=columns, input_shape=shape, trust_code=trusted))
        except (FilterDBError, ValueError) as exc:
            failures.append((label, " ".join(str(exc).split())))
    return specs, failures


# ----------------------------------------------------------------------------- Python API

def add_module(db, model, *, name: str, input_shape: tuple[int, int, int], **columns) -> str:
    """Extract a ``torch.nn.Module`` (or a list: an ensemble's members) into ``db`` as ``local:NAME``,
    with model-table ``columns`` (``training="robust"``, ``eps="8/255"``, ...); returns its model_id."""
    from filterdb.build import add_module as _add

    record = check_columns(columns)
    record.pop("name", None)
    return _add(db, model, source=SOURCE, name=name, input_shape=input_shape, record=record)


def add_state_dict(db, path_or_dict, *, arch: str, name: str | None = None, arch_kwargs: dict | None = None,
                   input_shape: tuple[int, int, int] | None = None, **columns) -> str:
    """Load a state dict (a file, or a dict of tensors) strictly into ``arch`` and extract it into
    ``db``; returns its model_id. ``arch`` takes the forms of ``--arch``."""
    from filterdb.build import load_spec
    from filterdb.records import extract_loaded

    if isinstance(path_or_dict, (str, Path)):
        if name is not None:
            columns["name"] = name
        spec = own_spec(path_or_dict, arch, arch_kwargs, columns, input_shape)
        return db.add_extracted(*extract_loaded(load_spec(spec)))
    from filterdb.sources.state_dict import find_state_dict, load_strict

    if name is None:
        raise FilterDBError("add_state_dict of a dict: give name=...")
    record = check_columns(columns)
    record.pop("name", None)
    model, default, facts = Architecture(arch, dict(arch_kwargs or {})).build()
    load_strict(model, find_state_dict(path_or_dict, name), name, arch)
    shape = _input_shape(parse_input_shape(input_shape, "input_shape"), record, default, name)
    from filterdb.build import add_module as _add
    return _add(db, model.eval(), source=SOURCE, name=name, input_shape=shape, record={**facts, **record})
