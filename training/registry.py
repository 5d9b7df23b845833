"""Model strings: a strict parser, a registry of architecture families and one factory.

Grammar (cf. timm's ``create_model``)::

    <head>[_<option>]*          native families, e.g. resnet20-16_k5_reflect
    robustbench:<dataset>/<threat model>/<name>    e.g. robustbench:cifar10/Linf/Standard

The head names a family and its size (see ``FAMILIES``: ``cnn4-16``, ``resnet20-16``,
``preactresnet18``, ``wrn28-10``, ``robustresnet-a1``, ``wrn-a1``). Options, in any order,
at most one of each kind:

    k<odd>                                   kernel size of every k x k conv (default k3)
    zeros|reflect|replicate|circular|nopad|nopadcrop   padding mode of every k x k conv (default zeros)

``nopad`` is the padding paper's no-padding model: unpadded convs, each residual branch
zero-padded back to its shortcut's size; ``nopadcrop`` pads nothing at all and center-crops
the shortcuts instead (see ``models/layers.py``).
    relu|silu|gelu|elu|softplus|leakyrelu|mish   activation (default relu)

``str(parse_model_string(s))`` is the canonical string: defaults dropped, options in the
order kernel, padding, activation. A canonical string round-trips unchanged.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from filterdb.errors import FilterDBError

from .models import robustbench_ids
from .models.digits import PlainCNN
from .models.layers import ACTIVATIONS, LayerOptions
from .models.preact import preact_resnet, wide_resnet
from .models.resnet import CifarResNet
from .models.robustresnet import ROBUST_RESNETS, robust_resnet, wrn_a

ROBUSTBENCH_PREFIX = "robustbench:"
_T = TypeVar("_T")

# padding as written in a model string -> nn.Conv2d padding mode ("none": no padding at all)
PADDING_OPTIONS = {"zeros": "zeros", "reflect": "reflect", "replicate": "replicate", "circular": "circular",
                   "nopad": "none", "nopadcrop": "crop"}
_PADDING_NAMES = {mode: option for option, mode in PADDING_OPTIONS.items()}


class ModelStringError(FilterDBError, ValueError):
    """A model string that does not parse."""


class ModelBuildError(FilterDBError, RuntimeError):
    """A valid model string whose model cannot be built here (it downloads weights, needs CUDA, ...)."""


@dataclass(frozen=True)
class ArchSpec:
    """A parsed model string. ``str(spec)`` gives the canonical model string."""

    family: str
    depth: int | None = None
    width: int | None = None
    variant: str | None = None  # "a1".."a4" for the RobustResNet scalings, the id for robustbench
    kernel_size: int = 3
    padding: str = "zeros"  # an nn.Conv2d padding mode, or "none" / "crop" (unpadded, see LayerOptions)
    activation: str = "relu"

    @property
    def layer_options(self) -> LayerOptions:
        return LayerOptions(self.kernel_size, self.padding, self.activation)

    def __str__(self) -> str:
        family = FAMILIES[self.family]
        head = family.template.format(depth=self.depth, width=self.width, variant=self.variant)
        options = []
        if self.kernel_size != 3:
            options.append(f"k{self.kernel_size}")
        if self.padding != "zeros":
            options.append(_PADDING_NAMES[self.padding])
        if self.activation != "relu":
            options.append(self.activation)
        return "_".join([head, *options])


@dataclass(frozen=True)
class Family:
    name: str
    pattern: str  # regex of the head; named groups depth, width, variant
    template: str  # str.format template of the head
    summary: str
    build: Callable[[ArchSpec, int, int], nn.Module]  # (spec, num_classes, in_chans) -> model
    check: Callable[[ArchSpec], str | None] = lambda spec: None  # an error message, or None
    title: str = "{name}"  # str.format template of the architecture's name, e.g. WideResNet-{depth}-{width}
    examples: tuple[str, ...] = ()  # common heads, offered as near matches of an unknown name


def architecture_title(spec: ArchSpec) -> str:
    """The architecture a model string builds, by its usual name: wrn28-10 -> WideResNet-28-10."""
    return FAMILIES[spec.family].title.format(name=spec.family, depth=spec.depth, width=spec.width,
                                              variant=(spec.variant or "").upper(), id=spec.variant)


def _captured(value: _T | None) -> _T:
    """A field of the spec that its family's pattern always captures (depth, width or variant)."""
    assert value is not None, "the family's pattern captures this field"
    return value


def _depth_rule(step: int, offset: int, minimum: int):
    def check(spec: ArchSpec) -> str | None:
        depth = _captured(spec.depth)
        if depth < minimum or (depth - offset) % step:
            return f"depth must be {step}n + {offset} with n >= 1 ({minimum}, {minimum + step}, ...), got {depth}"
        return None
    return check


_N = r"[1-9][0-9]*"  # no leading zeros, so that the string round-trips
_VARIANTS = "|".join(ROBUST_RESNETS)

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("cnn", rf"cnn(?P<depth>{_N})-(?P<width>{_N})", "cnn{depth}-{width}",
           "plain CNN: <depth> conv layers of width <width>, stride 1 (for the 8x8 digits)",
           lambda s, n, c: PlainCNN(_captured(s.depth), _captured(s.width), n, c, s.layer_options),
           title="PlainCNN-{depth}-{width}", examples=("cnn4-16",)),
    Family("resnet", rf"resnet(?P<depth>{_N})-(?P<width>{_N})", "resnet{depth}-{width}",
           "open_lth CIFAR ResNet, depth 6n+2, stage widths W, 2W, 4W (resnet8-8 fits 8x8 digits)",
           lambda s, n, c: CifarResNet(_captured(s.depth), _captured(s.width), n, c, s.layer_options), _depth_rule(6, 2, 8),
           title="ResNet-{depth}-{width} (open_lth CIFAR)", examples=("resnet8-8", "resnet20-16", "resnet56-16")),
    Family("preactresnet", rf"preactresnet(?P<depth>{_N})", "preactresnet{depth}",
           "PreActResNet-18/34 (He et al. 2016, as in RobustBench), widths 64..512",
           lambda s, n, c: preact_resnet(_captured(s.depth), n, c, s.layer_options),
           lambda s: None if s.depth in (18, 34) else f"depth must be 18 or 34, got {s.depth}",
           title="PreActResNet-{depth}", examples=("preactresnet18", "preactresnet34")),
    Family("wrn", rf"wrn(?P<depth>{_N})-(?P<width>{_N})", "wrn{depth}-{width}",
           "WideResNet-<depth>-<width> (Zagoruyko & Komodakis), depth 6n+4",
           lambda s, n, c: wide_resnet(_captured(s.depth), _captured(s.width), n, c, s.layer_options), _depth_rule(6, 4, 10),
           title="WideResNet-{depth}-{width}", examples=("wrn28-10", "wrn34-10", "wrn70-16")),
    Family("robustresnet", rf"robustresnet-(?P<variant>{_VARIANTS})", "robustresnet-{variant}",
           "RobustResNet-A1..A4: RobustResBlocks with compound scaling (Huang et al., CVPR 2023)",
           lambda s, n, c: robust_resnet(_captured(s.variant), n, c, s.layer_options),
           title="RobustResNet-{variant}", examples=tuple(f"robustresnet-{v}" for v in ROBUST_RESNETS)),
    Family("wrn-a", rf"wrn-(?P<variant>{_VARIANTS})", "wrn-{variant}",
           "WRN-A1..A4: WRN basic blocks with the RobustResNet-A1..A4 depths and widths",
           lambda s, n, c: wrn_a(_captured(s.variant), n, c, s.layer_options),
           title="WRN-{variant}", examples=tuple(f"wrn-{v}" for v in ROBUST_RESNETS)),
    Family("robustbench", r"robustbench:(?P<variant>.+)", ROBUSTBENCH_PREFIX + "{variant}",
           "any RobustBench model id <dataset>/<threat model>/<name>, built with random weights",
           lambda s, n, c: _build_robustbench(_captured(s.variant), n, c),
           lambda s: robustbench_ids.check(_captured(s.variant)), title="RobustBench {id}"),
]}


def _build_robustbench(model_id: str, num_classes: int | None, in_chans: int | None) -> nn.Module:
    dataset = model_id.split("/")[0]
    classes = robustbench_ids.NUM_CLASSES[dataset]
    if num_classes not in (None, classes) or in_chans not in (None, 3):
        raise ModelBuildError(f"{ROBUSTBENCH_PREFIX}{model_id} has {classes} classes and 3 input channels; "
                              f"got num_classes={num_classes}, in_chans={in_chans}")
    if robustbench_ids.downloads_weights(model_id):
        raise ModelBuildError(f"{ROBUSTBENCH_PREFIX}{model_id} cannot be built offline: its RobustBench "
                              "constructor downloads pretrained weights (pretrained=True)")
    try:
        return robustbench_ids.build(model_id)
    except Exception as error:
        raise ModelBuildError(f"{ROBUSTBENCH_PREFIX}{model_id}: RobustBench's constructor failed: {error}") from error


def _options_help() -> str:
    return (f"k<odd> (kernel size, default k3); {'|'.join(PADDING_OPTIONS)} (padding, default zeros); "
            f"{'|'.join(ACTIVATIONS)} (activation, default relu)")


def _families_help() -> str:
    return "; ".join(f.template.format(depth="<depth>", width="<width>", variant=_variant_help(f)) for f in FAMILIES.values())


def _variant_help(family: Family) -> str:
    return "<dataset>/<threat>/<name>" if family.name == "robustbench" else "|".join(ROBUST_RESNETS)


def _parse_option(option: str, found: dict, model_string: str) -> None:
    value: int | str
    if m := re.fullmatch(rf"k({_N})", option):
        kind, value = "kernel_size", int(m.group(1))
        if value % 2 == 0:
            raise ModelStringError(f"{model_string!r}: kernel size must be odd, got {option!r}")
    elif option in PADDING_OPTIONS:
        kind, value = "padding", PADDING_OPTIONS[option]
    elif option in ACTIVATIONS:
        kind, value = "activation", option
    else:
        raise ModelStringError(f"{model_string!r}: unknown option {option!r}; valid options: {_options_help()}")
    if kind in found:
        raise ModelStringError(f"{model_string!r}: more than one {kind.replace('_', ' ')} option")
    found[kind] = value


def parse_model_string(model_string: str) -> ArchSpec:
    """Parse a model string strictly; raise ``ModelStringError`` naming what is wrong."""
    if model_string.startswith(ROBUSTBENCH_PREFIX):  # ids may contain "_": no options
        head, options = model_string, []
    else:
        head, *options = model_string.split("_")
    for family in FAMILIES.values():
        if m := re.fullmatch(family.pattern, head):
            break
    else:
        import difflib

        near = difflib.get_close_matches(head, [e for f in FAMILIES.values() for e in f.examples], n=4, cutoff=0.6)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise ModelStringError(f"unknown model {head!r}; {hint}valid models: {_families_help()}")
    groups: dict[str, Any] = {k: (int(v) if k in ("depth", "width") else v) for k, v in m.groupdict().items()}
    found: dict = {}
    for option in options:
        _parse_option(option, found, model_string)
    spec = ArchSpec(family.name, **groups, **found)
    if problem := family.check(spec):
        raise ModelStringError(f"{model_string!r}: {problem}")
    return spec


def create_model(model_string: str, num_classes: int | None = None, in_chans: int | None = None) -> nn.Module:
    """Build the model a string names, with random weights (seed with ``torch.manual_seed``).

    Defaults: 10 classes and 3 input channels for native families; a RobustBench id's own
    dataset (whose class count and channels are fixed) for robustbench ids.
    """
    spec = parse_model_string(model_string)
    if spec.family == "robustbench":  # its dataset fixes classes and channels unless given
        return _build_robustbench(_captured(spec.variant), num_classes, in_chans)
    return FAMILIES[spec.family].build(spec, 10 if num_classes is None else num_classes, 3 if in_chans is None else in_chans)


def list_models(robustbench: bool = False) -> list[str]:
    """Model-string patterns of every family (``<depth>``, ``<width>`` to fill in, options
    ``_k<odd>``, padding, activation after them); with ``robustbench=True`` also every
    RobustBench id as a model string."""
    patterns = []
    for family in FAMILIES.values():
        if family.name == "robustbench":
            continue
        variants = ROBUST_RESNETS if "{variant}" in family.template else [None]
        patterns += [family.template.format(depth="<depth>", width="<width>", variant=v) for v in variants]
    if robustbench:
        patterns += [ROBUSTBENCH_PREFIX + model_id for model_id in robustbench_ids.list_ids()]
    return patterns


def describe_models() -> str:
    """The grammar, one line per family and the options: text for a CLI's help."""
    lines = ["<model>[_<option>]... where <model> is one of:"]
    for family in FAMILIES.values():
        head = family.template.format(depth="<depth>", width="<width>", variant=_variant_help(family))
        lines.append(f"  {head:32s} {family.summary}")
    lines.append(f"options (not for robustbench ids): {_options_help()}")
    return "\n".join(lines)


def check_input_size(model_string: str, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Return ``input_shape`` (C, H, W, e.g. a dataset's) if the model accepts it.

    Unpadded (``nopad``, ``nopadcrop``) models shrink maps by k - 1 per conv; a model whose maps
    would vanish raises ``ModelStringError`` naming the smallest input side it accepts. Padded
    models accept every input (a padded conv or pool maps n px to ceil(n / stride) >= 1).
    """
    spec = parse_model_string(model_string)
    c, h, w = input_shape
    if spec.family == "robustbench" or spec.layer_options.pads:
        return c, h, w
    smallest = min_input_size(model_string, in_chans=input_shape[0])
    if smallest > min(input_shape[1:]):
        raise ModelStringError(f"{model_string!r} needs inputs of at least {smallest}x{smallest}, "
                               f"got {input_shape[1]}x{input_shape[2]}")
    return c, h, w


def min_input_size(model_string: str, in_chans: int = 3, limit: int = 1024) -> int:
    """The smallest square input side a model accepts (found on the meta device, no compute)."""
    with torch.device("meta"):
        model = create_model(model_string, in_chans=in_chans).eval()

    def accepts(side: int) -> bool:
        try:
            model(torch.empty(1, in_chans, side, side, device="meta"))
            return True
        except (RuntimeError, ValueError):
            return False

    if not accepts(limit):
        raise ModelStringError(f"{model_string!r} accepts no input up to {limit}x{limit}")
    low, high = 1, limit  # invariant: accepts(high); the sizes below low are refused
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if accepts(middle) else (middle + 1, high)
    return high

