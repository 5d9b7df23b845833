"""Do the filters a database holds reproduce what each convolution of the model computes?

Written apart from filterdb's own extraction code, from the layer table alone: hooks
capture every stored convolution's input and output on a probe forward pass, and each
output is compared with ``F.conv2d`` of that input with the layer's filters read back
from the database (geometry from the layer row, bias from the module, which filterdb
does not store). :func:`unaccounted_convolutions` finds the convolutions a forward runs
with learned weights outside every stored (or listed as skipped) module: a layer whose
filters would be missing, or applied without its module's forward. Used by the tests and
by ``bench/sweep_zoo.py``.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

CONVOLUTIONS = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                "convolution", "_convolution", "conv_tbc"}


def _pad_tf_same(x: torch.Tensor, row) -> torch.Tensor:
    pads = []
    for size, k, s, d in ((x.shape[-1], row["kernel_w"], row["stride_w"], row["dilation_w"]),
                          (x.shape[-2], row["kernel_h"], row["stride_h"], row["dilation_h"])):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def conv_from_row(x: torch.Tensor, weight: torch.Tensor, bias, row) -> torch.Tensor:
    """The convolution a layer row describes, applied to ``x``."""
    padding = row["padding"]
    if padding == "tf_same":
        x, padding = _pad_tf_same(x, row), 0
    elif padding not in ("same", "valid"):
        ph, pw = (int(p) for p in padding.split(","))
        if row["padding_mode"] != "zeros":
            x, padding = F.pad(x, (pw, pw, ph, ph), mode=row["padding_mode"]), 0
        else:
            padding = (ph, pw)
    return F.conv2d(x, weight, bias, (row["stride_h"], row["stride_w"]), padding,
                    (row["dilation_h"], row["dilation_w"]), row["groups"])


def reproduction_errors(db, model_id: str, members: list[nn.Module], input_shape, seed: int = 0) -> dict:
    """(member, module name) -> max over its calls of max|output - F.conv2d(input, stored)| / max|output|.

    CondConv2d experts (rows '<module>:expert<i>') are mixed with the routing weights the
    module received. Layers the probe pass does not reach are absent from the result.
    """
    layers = db.layers[db.layers["model_id"] == model_id]
    weights: dict[tuple[int, str], list] = defaultdict(list)
    for _, row in layers.iterrows():
        filters = torch.from_numpy(np.asarray(db.read_layer(row)))
        weight = filters.reshape(row["out_channels"], row["in_channels"] // row["groups"], row["kernel_h"], row["kernel_w"])
        module_name, _, expert = row["name"].partition(":expert")
        weights[(int(row["member"]), module_name)].append((int(expert) if expert else 0, weight, row))
    errors: dict[tuple[int, str], float] = {}

    def hook_for(key):
        experts = sorted(weights[key], key=lambda e: e[0])

        def hook(module, inputs, output):
            x = inputs[0]
            row = experts[0][2]
            if len(inputs) > 1:  # CondConv2d(x, routing_weights): one example's mixture of experts
                routing = inputs[1]
                stacked = torch.stack([w for _, w, _ in experts]).to(x.dtype)
                outs = []
                for b in range(x.shape[0]):
                    weight = torch.einsum("e,eoikl->oikl", routing[b], stacked)
                    bias = routing[b] @ module.bias if module.bias is not None else None
                    outs.append(conv_from_row(x[b:b + 1], weight, bias, row))
                expected = torch.cat(outs)
            else:
                expected = conv_from_row(x, experts[0][1].to(x.dtype), module.bias, row)
            scale = output.abs().max().item() or 1.0
            error = (output - expected).abs().max().item() / scale if output.shape == expected.shape else math.inf
            errors[key] = max(errors.get(key, 0.0), error)

        return hook

    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((1, *input_shape), generator=generator)
    for member_index, member in enumerate(members):
        modules = dict(member.named_modules())
        handles = [modules[name].register_forward_hook(hook_for((m, name)))
                   for (m, name) in weights if m == member_index]
        was_training = member.training
        try:
            member.eval()
            with torch.no_grad():
                member(x)
        finally:
            for h in handles:
                h.remove()
            member.train(was_training)
    return errors


class _ConvolutionCalls(TorchFunctionMode):
    """Calls the innermost running module (``stack[-1]``) makes to a torch convolution with a weight that
    requires grad (a parameter, or computed from one)."""

    def __init__(self, stack: list):
        super().__init__()
        self.stack, self.calls = stack, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in CONVOLUTIONS:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if isinstance(weight, torch.Tensor) and weight.requires_grad:
                self.calls.append(self.stack[-1] if self.stack else ("", "<outside any module>"))
        return func(*args, **kwargs)


def unaccounted_convolutions(members: list[nn.Module], input_shape, accounted: set[tuple[int, str]],
                             seed: int = 0) -> list[tuple[int, str, str]]:
    """(member, module name, class) of each module that itself runs a convolution with learned weights on a
    probe forward (autograd on, eval mode) but is not in ``accounted`` ((member, module name) of the stored
    layers and the skipped convolutions). Each such module once, in call order."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((1, *input_shape), generator=generator)
    found: dict[tuple[int, str, str], None] = {}
    for member_index, member in enumerate(members):
        stack: list[tuple[str, str]] = []
        handles = []
        for name, module in member.named_modules():
            entry = (name, type(module).__name__)
            handles.append(module.register_forward_pre_hook(lambda m, i, e=entry, stack=stack: stack.append(e)))  # None: input kept
            handles.append(module.register_forward_hook(lambda m, i, o, stack=stack: stack.pop() and None))  # None: output kept
        mode = _ConvolutionCalls(stack)
        was_training = member.training
        try:
            member.eval()
            with torch.enable_grad(), mode:
                member(x)
        finally:
            for h in handles:
                h.remove()
            member.train(was_training)
        for name, cls in mode.calls:
            if (member_index, name) not in accounted:
                found.setdefault((member_index, name, cls), None)
    return list(found)
