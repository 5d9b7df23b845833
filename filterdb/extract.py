"""Extraction: every 2-D convolution of a ``torch.nn.Module``, in execution order.

The order comes from a forward pass with hooks on a dummy input, not from module
definition order (which is wrong for many architectures); the pass skips the
convolutions' arithmetic, which the order does not need. Convolutions that the pass
never reaches are kept, flagged ``reached = False`` and placed last.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from filterdb.errors import FilterDBError


@dataclass
class ExtractedLayer:
    info: dict  # layer-table columns except model_id, start, stop
    weight: torch.Tensor  # effective weight, (out, in/groups, kh, kw)
    model_name: str = "model"

    @property
    def kernel(self) -> str:
        return self.info["kernel"]

    def filters(self) -> np.ndarray:
        """The layer's filters as float32 (n, kh, kw), out-channel-major (no copy when possible)."""
        w = self.weight.detach()
        if w.device.type != "cpu" or w.dtype != torch.float32:
            w = w.to("cpu", torch.float32)
        return w.contiguous().numpy().reshape(-1, w.shape[-2], w.shape[-1])

    def check_finite(self) -> None:
        """Raise ``FilterDBError`` naming the model and layer if a weight is NaN or Inf."""
        # One single-threaded reduction (it runs beside the writer thread of write_shard): any
        # NaN/Inf makes the sum non-finite; an overflowing sum of finite weights only costs the
        # exact check.
        filters = self.filters()
        if not np.isfinite(filters.sum()) and not np.isfinite(filters).all():
            bad = int((~torch.isfinite(self.weight)).sum())
            raise FilterDBError(f"{self.model_name}, layer {self.info['name']}: {bad} weight(s) are NaN or Inf; "
                                "the checkpoint is corrupt or training diverged - re-export it from a healthy run")


def conv_modules(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """All ``nn.Conv2d`` modules (subclasses included) with their names, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def effective_weight(module: nn.Conv2d) -> tuple[torch.Tensor, str]:
    """The weight the convolution really applies, and how it was obtained.

    Parametrized modules (``torch.nn.utils.parametrize``) compute it on access;
    old-style ``weight_norm`` keeps a cached ``weight`` that is stale after a state-dict
    load, so it is recomputed from ``weight_g`` and ``weight_v``.
    """
    with torch.no_grad():
        if torch.nn.utils.parametrize.is_parametrized(module, "weight"):
            return module.weight.detach(), "parametrized"
        for hook in module._forward_pre_hooks.values():
            if type(hook).__name__ == "WeightNorm" and hasattr(hook, "compute_weight"):
                return hook.compute_weight(module).detach(), "weight_norm"
        return module.weight.detach(), "plain"


def execution_order(model: nn.Module, convs: list[nn.Conv2d], input_shape: tuple[int, ...]) -> dict[int, int]:
    """Map id(conv) -> order of its first call in one forward pass with hooks on a seeded random input.

    The pass skips the arithmetic of the convolutions (:func:`_shape_only_forward`), nearly
    all of a CNN's forward cost and irrelevant to the order. A model that fails that way
    (say it checks the statistics of its activations) gets a complete pass instead.
    """
    try:
        return _hooked_pass(model, convs, input_shape, shapes_only=True)
    except Exception:  # noqa: BLE001 - the complete pass below reports the model's real errors
        return _hooked_pass(model, convs, input_shape, shapes_only=False)


def _shape_only_forward(conv: nn.Conv2d):
    """A stand-in ``forward`` for ``conv``: zeros of the shape, dtype and device its output would have."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4) or x.shape[-3] != conv.in_channels:
            raise RuntimeError("input does not fit the convolution")  # the complete pass says how
        size = x.shape[-2:]
        if conv.padding == "same":
            out = tuple(size)
        else:
            pad = (0, 0) if conv.padding == "valid" else conv.padding
            out = tuple((size[i] + 2 * pad[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1) // conv.stride[i] + 1
                        for i in range(2))
        if min(out) < 1:
            raise RuntimeError("input smaller than the kernel")
        return x.new_zeros((*x.shape[:-3], conv.out_channels, *out))

    return forward


def _hooked_pass(model: nn.Module, convs: list[nn.Conv2d], input_shape: tuple[int, ...],
                 shapes_only: bool) -> dict[int, int]:
    order: dict[int, int] = {}

    def hook(module, _inputs, _output):
        order.setdefault(id(module), len(order))

    handles = [c.register_forward_hook(hook) for c in convs]
    # Only convolutions that run nn.Conv2d's own forward: a subclass, or an instance given its
    # own forward, may compute its output differently (and the latter must get it back).
    stand_ins = [c for c in convs if type(c).forward is nn.Conv2d.forward and "forward" not in vars(c)
                 ] if shapes_only else []
    was_training = model.training
    try:
        for conv in stand_ins:
            conv.forward = _shape_only_forward(conv)
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        generator = torch.Generator().manual_seed(0)
        x = torch.rand((1, *input_shape), generator=generator).to(device, dtype)
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for conv in stand_ins:
            del conv.forward
        for h in handles:
            h.remove()
        model.train(was_training)
    return order


def _padding_text(padding) -> str:
    if isinstance(padding, str):
        return padding
    return ",".join(str(int(p)) for p in padding)


def extract_layers(model: nn.Module, input_shape: tuple[int, int, int], *, member: int = 0,
                   model_name: str = "model", check_values: bool = True) -> list[ExtractedLayer]:
    """Extract the convolutions of one network, reached ones in execution order, then unreached ones.

    NaN/Inf weights raise ``FilterDBError`` unless ``check_values`` is false (``write_shard``
    checks them itself, while it writes).
    """
    named = conv_modules(model)
    if not named:
        raise FilterDBError(f"{model_name}: the model has no Conv2d layers, so there are no filters to store; "
                            "check that the right architecture was built")
    try:
        order = execution_order(model, [m for _, m in named], input_shape)
    except Exception as exc:  # noqa: BLE001 - any failure of user code in forward
        shape = "x".join(map(str, input_shape))
        raise FilterDBError(f"{model_name}: forward pass on a 1x{shape} input failed ({type(exc).__name__}: {exc}); "
                            "give the model's input shape (--input-shape C,H,W)") from exc

    reached = sorted((order[id(m)], name, m) for name, m in named if id(m) in order)
    unreached = [(name, m) for name, m in named if id(m) not in order]
    n_reached = len(reached)
    layers: list[ExtractedLayer] = []
    for depth, (exec_order, name, m) in enumerate(reached):
        norm = depth / (n_reached - 1) if n_reached > 1 else 0.0
        layers.append(_layer(m, name, member, exec_order, depth, norm, model_name))
    for name, m in unreached:
        layers.append(_layer(m, name, member, -1, -1, float("nan"), model_name))
    if check_values:
        for layer in layers:
            layer.check_finite()
    return layers


def _layer(m: nn.Conv2d, name: str, member: int, exec_order: int, depth: int, depth_norm: float,
           model_name: str) -> ExtractedLayer:
    weight, kind = effective_weight(m)
    if weight.dim() != 4:
        raise FilterDBError(f"{model_name}, layer {name}: weight has shape {tuple(weight.shape)}, expected 4-D")
    out_c, in_per_group, kh, kw = weight.shape
    info = {
        "member": member,
        "name": name,
        "exec_order": exec_order,
        "reached": exec_order >= 0,
        "conv_depth": depth,
        "conv_depth_norm": depth_norm,
        "in_channels": int(m.in_channels),
        "out_channels": int(out_c),
        "groups": int(m.groups),
        "kernel": f"{kh}x{kw}",
        "kernel_h": int(kh),
        "kernel_w": int(kw),
        "stride_h": int(m.stride[0]),
        "stride_w": int(m.stride[1]),
        "padding": _padding_text(m.padding),
        "padding_mode": str(m.padding_mode),
        "dilation_h": int(m.dilation[0]),
        "dilation_w": int(m.dilation[1]),
        "has_bias": m.bias is not None,
        "weight_kind": kind,
        "n_filters": int(out_c * in_per_group),
    }
    return ExtractedLayer(info=info, weight=weight, model_name=model_name)


def extract_members(members: list[nn.Module], input_shape: tuple[int, int, int], model_name: str = "model",
                    check_values: bool = True) -> list[ExtractedLayer]:
    """Extract every member of a model (ensembles have several), numbering layers within the model."""
    layers: list[ExtractedLayer] = []
    for i, member in enumerate(members):
        layers.extend(extract_layers(member, input_shape, member=i, model_name=model_name, check_values=check_values))
    for index, layer in enumerate(layers):
        layer.info["layer_index"] = index
    return layers
