"""The columns of the model table and the layer table: name, type, missing value, meaning.

These lists are the single source of truth: the store writes them (with each column's
description as an HDF5 attribute), the README's format section documents them, and
records are validated against them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT_NAME = "filterdb"
FORMAT_VERSION = "1.0"


def kernel_name(kh: int, kw: int) -> str:
    """The layer table's ``kernel`` of a kh x kw convolution, and the name of its filters' dataset: ``"3x3"``."""
    return f"{int(kh)}x{int(kw)}"


def kernel_shape(kernel: str) -> tuple[int, int]:
    """``"3x3"`` -> (3, 3)."""
    kh, _, kw = kernel.partition("x")
    return int(kh), int(kw)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "str", "int", "float", "bool"
    doc: str

    @property
    def missing(self) -> Any:
        return {"str": "", "int": -1, "float": math.nan, "bool": False}[self.kind]

    @property
    def numpy_dtype(self):
        return {"str": object, "int": np.int64, "float": np.float64, "bool": np.bool_}[self.kind]


MODEL_COLUMNS: tuple[Column, ...] = (
    Column("model_id", "str", "Stable id: first 12 hex digits of sha1(key). The table's index."),
    Column("key", "str", "Identity of the model, 'source:name'; model_id is derived from it."),
    Column("source", "str", "Where the model came from: robustbench, demo, checkpoint, timm or cnn-filter-db."),
    Column("name", "str", "Name within the source (robustbench: dataset/threat_model/model name)."),
    Column("dataset", "str", "Training dataset, lower case: cifar10, cifar100, imagenet, digits, ..."),
    Column("threat_model", "str", "Threat model of the robust evaluation: Linf, L2, corruptions; '' if none."),
    Column("eps", "float", "Perturbation budget of the threat model in [0, 1] pixel units; NaN if none."),
    Column("training", "str", "'robust' (adversarially trained) or 'normal'; '' if unknown."),
    Column("training_method", "str", "standard, fgsm, pgd, trades, mart, cusp, ... ('' if unknown)."),
    Column("architecture", "str", "Architecture name, e.g. WideResNet-28-10, PreActResNet-18."),
    Column("model_string", "str", "filterdb.training model string that rebuilds the model ('' if none)."),
    Column("pair", "str", "Matched pair the model was trained in, 'run@init' (its twin has the same seed, initial weights and data order); '' if none."),
    Column("pair_role", "str", "Role within its pair: 'normal' or 'robust' ('' if not in a pair)."),
    Column("seed", "int", "Training seed of a model trained by filterdb; -1 if unknown."),
    Column("clean_acc", "float", "Clean test accuracy in percent; NaN if unknown."),
    Column("robust_acc", "float", "Robust test accuracy in percent under robust_attack at eps; NaN if unknown."),
    Column("robust_attack", "str", "Attack behind robust_acc, e.g. autoattack, pgd-10 ('' if none)."),
    Column("evaluation_json", "str", "Checkpoints evaluated by 'filterdb evaluate': all its results as JSON (attacks, budgets, border ratios, fooling rates); '' if none."),
    Column("extra_data", "bool", "Whether training used data beyond the dataset's training set."),
    Column("paper", "str", "Title of the paper that published the model ('' if none)."),
    Column("venue", "str", "Venue of that paper ('' if none)."),
    Column("paper_url", "str", "Link to that paper ('' if none)."),
    Column("n_params", "int", "Number of parameters of the model (all ensemble members)."),
    Column("n_members", "int", "Number of networks under this id (ensembles have more than 1)."),
    Column("input_shape", "str", "Input shape used for the forward pass, CxHxW, e.g. 3x32x32."),
    Column("n_layers", "int", "Number of convolution layers stored for the model."),
    Column("n_filters", "int", "Number of filters stored for the model, all kernel sizes."),
    Column("skipped_convs", "str", "Modules that convolve but whose filters are not stored (Conv1d, Conv3d, ConvTranspose*d, other non-Conv2d convolutions), as a JSON list of {member, name, class, n_params, reason}; '' if none."),
    Column("weights_sha256", "str", "sha256 of the weights file the filters were read from ('' if none)."),
    Column("published_json", "str", "Models imported from a published filter database (cnn-filter-db): every model-level field of its metadata as JSON, under the published names (Task, Visual Category, Optimizer, Robust, ...); '' if none."),
    Column("tool_version", "str", "filterdb version that extracted the model."),
    Column("extracted_at", "str", "Extraction time, ISO 8601 UTC."),
)

LAYER_COLUMNS: tuple[Column, ...] = (
    Column("model_id", "str", "Model the layer belongs to (models.model_id)."),
    Column("layer_index", "int", "Position of the layer within its model: execution order, unreached layers last."),
    Column("member", "int", "Ensemble member the layer belongs to (0 for single networks)."),
    Column("name", "str", "Module name of the convolution in the PyTorch model."),
    Column("exec_order", "int", "Order of first execution in a forward pass with hooks; -1 if never reached."),
    Column("reached", "bool", "Whether the forward pass reached the layer."),
    Column("conv_depth", "int", "Index among the reached convolutions of the member; -1 if never reached."),
    Column("conv_depth_norm", "float", "conv_depth / (reached convs - 1): 0 for the first conv, 1 for the last; NaN if unreached."),
    Column("in_channels", "int", "Input channels of the convolution."),
    Column("out_channels", "int", "Output channels of the convolution."),
    Column("groups", "int", "Convolution groups (in_channels for depthwise)."),
    Column("kernel", "str", "Kernel size as 'HxW', e.g. 3x3; names the filter dataset /filters/<kernel>."),
    Column("kernel_h", "int", "Kernel height."),
    Column("kernel_w", "int", "Kernel width."),
    Column("stride_h", "int", "Vertical stride."),
    Column("stride_w", "int", "Horizontal stride."),
    Column("padding", "str", "Padding as given to the module: 'H,W', 'same' or 'valid'; 'tf_same' for TensorFlow SAME padding computed at run time (timm's *Same convolutions, extra pixel at the bottom/right)."),
    Column("padding_mode", "str", "zeros, reflect, replicate or circular."),
    Column("dilation_h", "int", "Vertical dilation."),
    Column("dilation_w", "int", "Horizontal dilation."),
    Column("has_bias", "bool", "Whether the convolution has a bias (not stored)."),
    Column("weight_kind", "str", "Which effective weight (the one the layer's forward convolves with) the filters are: 'plain' (nn.Conv2d's forward, weight as stored); 'parametrized', 'weight_norm', 'spectral_norm' (computed by torch); 'std_conv', 'std_conv_same' (timm StdConv2d(Same): per output channel (w - mean) / sqrt(var + eps)); 'scaled_std_conv', 'scaled_std_conv_same' (timm ScaledStdConv2d(Same): the same times gain * gamma / sqrt(fan_in)); 'bit_std_conv' (RobustBench BiT StdConv2d, eps 1e-10); 'conv2d_same' (timm Conv2dSame, weight as stored); 'probe_verified' (a Conv2d with its own forward or an unknown forward pre-hook: checked at extraction against F.conv2d with the stored filters on a probe input); 'condconv_expert' (one expert kernel of timm CondConv2d, layer '<module>:expert<i>'); 'onnx_initializer' (an ONNX Conv node's stored weight as the exporter wrote it, BatchNorm possibly folded in). Kinds applied in turn are joined by '+', e.g. 'parametrized+std_conv'."),
    Column("n_filters", "int", "Filters in the layer: out_channels * in_channels / groups."),
    Column("start", "int", "First row of the layer in /filters/<kernel>."),
    Column("stop", "int", "One past the last row of the layer in /filters/<kernel>."),
)

MODEL_COLUMN_NAMES = tuple(c.name for c in MODEL_COLUMNS)
LAYER_COLUMN_NAMES = tuple(c.name for c in LAYER_COLUMNS)


def complete_record(record: dict, columns: tuple[Column, ...], what: str) -> dict:
    """Return ``record`` with every column present (missing ones filled), unknown keys rejected."""
    names = {c.name for c in columns}
    unknown = sorted(set(record) - names)
    if unknown:
        raise ValueError(f"unknown {what} column(s) {unknown}; valid: {sorted(names)}")
    out = {}
    for c in columns:
        value = record.get(c.name, c.missing)
        if value is None:
            value = c.missing
        out[c.name] = value
    return out


def markdown_table(columns: tuple[Column, ...]) -> str:
    """The README's documentation of a table: one row per column."""
    lines = ["| column | type | missing | meaning |", "|---|---|---|---|"]
    for c in columns:
        missing = {"str": "`''`", "int": "`-1`", "float": "NaN", "bool": "`False`"}[c.kind]
        lines.append(f"| `{c.name}` | {c.kind} | {missing} | {c.doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("### /models\n\n" + markdown_table(MODEL_COLUMNS) + "\n\n### /layers\n\n" + markdown_table(LAYER_COLUMNS))
