"""Model files that are code, loaded only when the user trusts them (``--trust-code``).

A TorchScript archive (``torch.jit.save``) holds the model's program; a pickled whole module
(``torch.save(model)``) rebuilds its classes by calling them. Both run code from the file, so
``filterdb.sources.state_dict`` refuses them by default. Trusted, a pickled module is an
``nn.Module`` like any other and goes through the normal extractor. A TorchScript module is
not an ``nn.Conv2d``: each of its convolution submodules (``original_name == 'Conv2d'``)
becomes a plain ``nn.Conv2d`` with the same weight and geometry, its scripted forward is probed
against ``F.conv2d`` with that weight (``weight_kind`` ``probe_verified``), and the layers
are ordered as the scripted forward's inlined graph calls them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from filterdb.errors import FilterDBError

CONV_NAMES = ("Conv2d",)
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]


def load_pickled_module(path: Path):
    """``torch.load(weights_only=False)``: runs the file's code. Only with --trust-code."""
    import torch
    from torch import nn

    model = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(model, dict):
        raise FilterDBError(f"{path}: a dict, not a pickled model; give --arch to load it as a state dict")
    if not isinstance(model, nn.Module):
        raise FilterDBError(f"{path}: holds a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def _graph_order(scripted) -> list[str]:
    """Names of the submodules whose weight the inlined forward graph convolves with, in call order."""
    names: list[str] = []
    try:
        graph = scripted.inlined_graph
    except Exception:  # noqa: BLE001 - no forward: definition order
        return names
    path_of: dict[str, str] = {}
    for node in graph.nodes():
        if node.kind() == "prim::GetAttr":
            base = node.inputs().__next__()
            parent = path_of.get(base.unique(), "")
            path_of[node.output().unique()] = f"{parent}.{node.s('name')}" if parent else node.s('name')
        elif node.kind() in ("aten::conv2d", "aten::_convolution", "aten::convolution"):
            inputs = list(node.inputs())
            weight = path_of.get(inputs[1].unique(), "")
            if weight.endswith(".weight"):
                module = weight[:-len(".weight")]
                if module not in names:
                    names.append(module)
    return names


def _padding_mode(value: object, label: str) -> PaddingMode:
    mode: PaddingMode
    for mode in get_args(PaddingMode):
        if value == mode:
            return mode
    raise FilterDBError(f"{label}: padding_mode {value!r} is none of {', '.join(get_args(PaddingMode))}, "
                        "so its filters' geometry is unknown; no filters were stored")


def torchscript_convs(path: Path, label: str):
    """Plain ``nn.Conv2d`` copies of a TorchScript archive's convolutions, in forward order, each
    probed against its scripted forward; and the archive's parameter count."""
    import torch
    from torch import nn

    scripted = torch.jit.load(str(path), map_location="cpu").eval()
    subs = {name: m for name, m in scripted.named_modules() if getattr(m, "original_name", "") in CONV_NAMES}
    if not subs:
        raise FilterDBError(f"{label}: the TorchScript archive has no Conv2d submodules, so there are no filters")
    order = [n for n in _graph_order(scripted) if n in subs]
    order += [n for n in subs if n not in order]
    convs = []
    for name in order:
        m = subs[name]
        weight = m.weight.detach()
        out_c, in_g, kh, kw = weight.shape
        groups = int(m.groups)
        padding = m.padding if isinstance(m.padding, str) else tuple(m.padding)
        conv = nn.Conv2d(in_g * groups, out_c, (kh, kw), stride=tuple(m.stride), padding=padding,
                         dilation=tuple(m.dilation), groups=groups, bias=m.bias is not None,
                         padding_mode=_padding_mode(m.padding_mode, f"{label}, layer {name}"))
        with torch.no_grad():
            conv.weight.copy_(weight)
            if m.bias is not None and conv.bias is not None:
                conv.bias.copy_(m.bias.detach())
        x = torch.randn((1, in_g * groups, max(8, kh * 2), max(8, kw * 2)), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            got, expected = m(x), conv(x)
        scale = float(expected.abs().max()) or 1.0
        if got.shape != expected.shape or float((got - expected).abs().max()) / scale > 1e-4:
            raise FilterDBError(f"{label}, layer {name}: its scripted forward does not convolve with its stored "
                                "weight (probe mismatch), so its effective filters are unknown; no filters were stored")
        convs.append((name, conv))
    n_params = sum(p.numel() for p in scripted.parameters())
    return convs, n_params
