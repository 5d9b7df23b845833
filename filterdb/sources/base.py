"""What a source of models hands to the build: a spec to list, a loaded model to extract.

A source (demo, robustbench, checkpoint, timm) lists ``ModelSpec``s cheaply, without
loading weights, so that a build can skip models already in the database; ``load``
then returns a ``LoadedModel`` with the networks and the model-table facts it knows.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from filterdb.errors import FilterDBError
from filterdb.ids import model_id, model_key

if TYPE_CHECKING:
    from torch import nn


@dataclass
class ModelSpec:
    source: str
    name: str
    record: dict = field(default_factory=dict)  # model-table columns known before loading
    load: Callable[[ModelSpec], LoadedModel] | None = field(default=None, repr=False, compare=False)
    origin: str = ""  # what error messages name, e.g. the checkpoint file; default: the key

    @property
    def key(self) -> str:
        return model_key(self.source, self.name)

    @property
    def label(self) -> str:
        return self.origin or self.key

    @property
    def model_id(self) -> str:
        return model_id(self.source, self.name)


@dataclass
class LoadedModel:
    spec: ModelSpec
    members: list[nn.Module]  # one network, or each member of an ensemble
    input_shape: tuple[int, int, int]  # C, H, W of the forward pass that orders the layers
    weights_path: Path | None = None  # the file whose sha256 goes into the model table
    record: dict = field(default_factory=dict)  # model-table columns learned while loading
    cleanup: Callable[[], None] | None = field(default=None, repr=False)  # e.g. delete weights once stored
    # Layers read without a network (ONNX initializers): stored as given, with n_params; members stay empty.
    layers: list | None = field(default=None, repr=False)
    n_params: int = 0


@dataclass(frozen=True)
class InputShapeLoader:
    """A spec's loader whose models run the ordering forward pass at a given C, H, W (``--input-shape``)."""
    load: Callable[[ModelSpec], LoadedModel]
    input_shape: tuple[int, int, int]

    def __call__(self, spec: ModelSpec) -> LoadedModel:
        loaded = self.load(spec)
        loaded.input_shape = self.input_shape
        return loaded

    def prefetch(self, spec: ModelSpec) -> None:
        if hasattr(self.load, "prefetch"):
            self.load.prefetch(spec)


def parse_input_shape(value: str | Sequence[int] | None, option: str) -> tuple[int, int, int] | None:
    """C, H, W from ``"C,H,W"`` (or ``"CxHxW"``) or a sequence of three integers; None when ``value`` is.
    ``option`` is what the error names: ``--input-shape``, a manifest's ``input_shape`` column."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            sizes = [int(size) for size in value.replace("x", ",").split(",")]
        else:
            sizes = [operator.index(size) for size in value]
    except (TypeError, ValueError):
        sizes = []
    if len(sizes) != 3 or min(sizes) < 1:
        raise FilterDBError(f"{option} {value!r}: give channels, height and width as C,H,W, three integers >= 1, "
                            "e.g. 3,256,256")
    channels, height, width = sizes
    return channels, height, width


def with_input_shape(specs: list[ModelSpec], input_shape: tuple[int, int, int] | None) -> list[ModelSpec]:
    """The specs with their loaders set to ``input_shape`` (unchanged if None)."""
    if input_shape is None:
        return specs
    return [replace(spec, load=InputShapeLoader(spec.load, input_shape)) if spec.load else spec for spec in specs]
