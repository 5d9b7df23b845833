"""Extraction: every 2-D convolution of a ``torch.nn.Module``, its effective filters, in execution order.

Effective filters are the weight the layer's forward really convolves with, which is not
always ``module.weight``: parametrizations, weight and spectral norm, and the weight
standardization of timm's ``StdConv2d`` family and RobustBench's BiT ``StdConv2d``
compute it from the stored parameters. Each known case is resolved explicitly and named
in the layer's ``weight_kind`` (:data:`WEIGHT_KINDS`); the first layer of each non-plain
kind in a network is checked with one probe (its output on a random input against
``F.conv2d`` with the resolved weight). A Conv2d whose forward is unknown (a subclass or
an instance with its own ``forward``, an unknown forward pre-hook) is probed every time:
it is stored as ``probe_verified`` when the probe agrees, and refused with an error
naming the model and layer when it does not. Nothing is ever labelled ``plain`` that
does not run ``nn.Conv2d``'s own forward.

timm's ``CondConv2d`` (a per-example mixture of expert kernels, not an ``nn.Conv2d``) is
stored as one layer per expert, named ``<module>:expert<i>``, each laid out like a
convolution's weight. Other modules that convolve but are not ``nn.Conv2d`` (``Conv1d``,
``Conv3d``, ``ConvTranspose*d``, any module with a ``kernel_size`` and its own
parameters) are not stored; :func:`skipped_convs` lists them, and the model table keeps
that list (``skipped_convs``).

The order comes from a forward pass with hooks on a dummy input, not from module
definition order (which is wrong for many architectures); the pass skips the
arithmetic of the convolutions whose forward it knows, which the order does not need.
Convolutions that the pass never reaches are kept, flagged ``reached = False`` and placed last.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from filterdb.errors import FilterDBError
from filterdb.schema import kernel_name

# A Conv2d, a subclass with its own forward (timm's, RobustBench's), or a module shaped like one (timm's
# CondConv2d): their geometry and extra parameters (gain, scale, eps, num_experts) are read by name.
ConvLike = Any

# weight_kind -> what the stored filters are. Kinds combine with '+' in the order they are
# applied, e.g. 'parametrized+std_conv' for a parametrized timm StdConv2d.
WEIGHT_KINDS: dict[str, str] = {
    "plain": "nn.Conv2d's own forward: the weight as stored",
    "parametrized": "torch.nn.utils.parametrize (e.g. parametrizations.weight_norm): the parametrization's output",
    "weight_norm": "old-style torch.nn.utils.weight_norm: g * v / ||v||, recomputed from weight_g and weight_v",
    "spectral_norm": "old-style torch.nn.utils.spectral_norm: weight_orig / sigma with the stored u, v (eval mode)",
    "std_conv": "timm StdConv2d: per output channel (w - mean) / sqrt(var + eps), biased variance, the layer's eps",
    "std_conv_same": "timm StdConv2dSame: as std_conv",
    "scaled_std_conv": "timm ScaledStdConv2d: gain * gamma / sqrt(fan_in) * (w - mean) / sqrt(var + eps)",
    "scaled_std_conv_same": "timm ScaledStdConv2dSame: as scaled_std_conv",
    "bit_std_conv": "RobustBench bit_rn(_v2).StdConv2d (Bai2024MixedNUTS): (w - mean) / sqrt(var + 1e-10), biased variance",
    "conv2d_same": "timm Conv2dSame: the weight as stored (TensorFlow SAME padding, padding 'tf_same')",
    "probe_verified": "a Conv2d with its own forward or an unknown forward pre-hook: its output on a probe input "
                      "checked against F.conv2d with the stored filters",
    "condconv_expert": "one expert kernel of timm CondConv2d (layer '<module>:expert<i>'), (out, in/groups, kh, kw)",
    "onnx_initializer": "an ONNX Conv node's stored weight (filterdb.sources.onnx_model), as the exporter wrote it",
}
PROBE_TOLERANCE = {torch.float64: 1e-4, torch.float32: 1e-4}  # max |difference| / max |output|; else 1e-2


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


# ----------------------------------------------------------------------------- known forwards

def _timm_standardized(module: ConvLike, weight: torch.Tensor, scaled: bool) -> torch.Tensor:
    """timm.layers.std_conv, exactly as its forward computes it (the same call, so the same bits)."""
    gain = (module.gain * module.scale).view(-1) if scaled else None
    return F.batch_norm(weight.reshape(1, module.out_channels, -1), None, None, weight=gain,
                        training=True, momentum=0., eps=module.eps).reshape_as(weight)


def _bit_standardized(module: nn.Conv2d, weight: torch.Tensor) -> torch.Tensor:
    """robustbench.model_zoo.architectures.bit_rn(_v2).StdConv2d.forward, line for line."""
    v, m = torch.var_mean(weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
    return (weight - m) / torch.sqrt(v + 1e-10)


@dataclass(frozen=True)
class KnownForward:
    """What a known Conv2d forward does: its weight_kind, how it turns the weight into the filters it
    applies (None: as stored), and whether it pads TensorFlow-SAME at run time."""
    kind: str
    transform: Callable[[nn.Conv2d, torch.Tensor], torch.Tensor] | None = None
    tf_same: Callable[[nn.Conv2d], bool] = lambda module: False


def _dynamic_same(module: nn.Conv2d) -> bool:
    return bool(getattr(module, "same_pad", False))


KNOWN_FORWARDS: dict[str, KnownForward] = {
    "torch.nn.modules.conv.Conv2d": KnownForward("plain"),
    "timm.layers.std_conv.StdConv2d": KnownForward("std_conv", lambda m, w: _timm_standardized(m, w, False)),
    "timm.layers.std_conv.StdConv2dSame": KnownForward("std_conv_same", lambda m, w: _timm_standardized(m, w, False),
                                                       _dynamic_same),
    "timm.layers.std_conv.ScaledStdConv2d": KnownForward("scaled_std_conv", lambda m, w: _timm_standardized(m, w, True)),
    "timm.layers.std_conv.ScaledStdConv2dSame": KnownForward("scaled_std_conv_same",
                                                             lambda m, w: _timm_standardized(m, w, True), _dynamic_same),
    "robustbench.model_zoo.architectures.bit_rn_v2.StdConv2d": KnownForward("bit_std_conv", _bit_standardized),
    "robustbench.model_zoo.architectures.bit_rn.StdConv2d": KnownForward("bit_std_conv", _bit_standardized),
    "timm.layers.conv2d_same.Conv2dSame": KnownForward("conv2d_same", None, lambda m: True),
    "timm.layers.conv2d_same.Conv2dSameExport": KnownForward("conv2d_same", None, lambda m: True),
}
CONDCONV = "timm.layers.cond_conv2d.CondConv2d"


def _qualified(cls: type) -> str:
    name = f"{cls.__module__}.{cls.__qualname__}"
    return name.replace("timm.models.layers.", "timm.layers.", 1)  # timm < 0.9 kept its layers there


def forward_owner(module: nn.Module) -> str:
    """Qualified name of the class whose ``forward`` the module runs (parametrize's generated
    subclasses define none, so a parametrized StdConv2d still runs StdConv2d's)."""
    for cls in type(module).__mro__:
        if "forward" in vars(cls):
            return _qualified(cls)
    return _qualified(type(module))


def known_forward(module: nn.Module) -> KnownForward | None:
    """The module's forward if filterdb knows it, None for a forward that must be probed (also when
    nn.Conv2d's ``_conv_forward``, which its forward calls, is replaced)."""
    if "forward" in vars(module) or "_conv_forward" in vars(module):
        return None
    if isinstance(module, nn.Conv2d) and type(module)._conv_forward is not nn.Conv2d._conv_forward:
        return None
    return KNOWN_FORWARDS.get(forward_owner(module))


def _stored_weight(module: nn.Conv2d) -> tuple[torch.Tensor, list[str], bool]:
    """The weight the forward reads as ``self.weight``, the kinds that produced it, and whether
    an unknown forward pre-hook may change it."""
    if torch.nn.utils.parametrize.is_parametrized(module, "weight"):
        weight, kinds = module.weight, ["parametrized"]
    else:
        weight, kinds = module.weight, []
    unknown_hook = False
    for hook in module._forward_pre_hooks.values():
        hook_name = getattr(hook, "name", None)
        if type(hook).__name__ == "WeightNorm" and hasattr(hook, "compute_weight") and hook_name == "weight":
            weight, kinds = hook.compute_weight(module), ["weight_norm"]
        elif type(hook).__name__ == "SpectralNorm" and hasattr(hook, "compute_weight") and hook_name == "weight":
            weight, kinds = hook.compute_weight(module, do_power_iteration=False), ["spectral_norm"]
        else:
            unknown_hook = True
    return weight, kinds, unknown_hook


def effective_weight(module: ConvLike) -> tuple[torch.Tensor, str]:
    """The weight the convolution really applies, and its ``weight_kind`` (see :data:`WEIGHT_KINDS`).

    A forward filterdb does not know (or an unknown forward pre-hook) adds the kind
    ``probe_verified``: :func:`extract_layers` then probes the layer before storing it.
    """
    with torch.no_grad():
        weight, kinds, unknown_hook = _stored_weight(module)
        forward = known_forward(module)
        if forward is not None:
            if forward.transform is not None:
                weight = forward.transform(module, weight)
            if forward.kind != "plain":
                kinds.append(forward.kind)
        if forward is None or unknown_hook:
            kinds.append("probe_verified")
        return weight.detach(), "+".join(kinds) or "plain"


def tf_same(module: ConvLike) -> bool:
    """Whether the module pads TensorFlow-SAME at run time (the extra pixel at the bottom/right)."""
    if _qualified(type(module)) == CONDCONV:
        return bool(module.dynamic_padding)
    forward = known_forward(module)
    return forward is not None and forward.tf_same(module)


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow SAME along one axis (timm.layers.padding.pad_same)."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def convolve(module: ConvLike, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d`` of ``x`` with ``weight`` under the module's geometry (padding mode, TF SAME included)."""
    padding = module.padding
    if tf_same(module):
        (top, bottom), (left, right) = (tf_same_padding(x.shape[-2 + i], weight.shape[-2 + i], module.stride[i],
                                                        module.dilation[i]) for i in range(2))
        x, padding = F.pad(x, (left, right, top, bottom)), 0
    elif getattr(module, "padding_mode", "zeros") != "zeros":
        x, padding = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode), 0
    return F.conv2d(x, weight, bias, module.stride, padding, module.dilation, module.groups)


# ----------------------------------------------------------------------------- which modules

def conv_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose filters are stored, with their names, in definition order: every
    ``nn.Conv2d`` (subclasses included) and every timm ``CondConv2d``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d) or _is_condconv(m)]


def _is_condconv(module: nn.Module) -> bool:
    return any(_qualified(cls) == CONDCONV for cls in type(module).__mro__)


def skipped_convs(model: nn.Module) -> list[dict]:
    """Modules that convolve but whose filters are not stored: name, class, parameter count, why."""
    skipped = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) or _is_condconv(m):
            continue
        own_params = sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            reason = "transposed convolution: its weight is the adjoint of a convolution's, not filters of its output"
        elif isinstance(m, nn.modules.conv._ConvNd):
            reason = f"{len(m.kernel_size)}-D kernels do not fit the database's (N, kh, kw) filter arrays"
        elif hasattr(m, "kernel_size") and own_params:
            reason = "convolves but is not an nn.Conv2d: filterdb does not know how it applies its weight"
        else:
            continue
        skipped.append({"name": name, "class": type(m).__name__, "n_params": int(own_params), "reason": reason})
    return skipped


# ----------------------------------------------------------------------------- execution order

def execution_order(model: nn.Module, convs: list[nn.Module], input_shape: tuple[int, ...],
                    input_shapes: dict[int, tuple[int, ...]] | None = None) -> dict[int, int]:
    """Map id(conv) -> order of its first call in one forward pass with hooks on a seeded random input.

    The pass skips the arithmetic of the convolutions whose forward is known
    (:func:`_shape_only_forward`), nearly all of a CNN's forward cost and irrelevant to the
    order. A model that fails that way (say it checks the statistics of its activations)
    gets a complete pass instead. ``input_shapes``, if given, receives id(conv) -> the
    shape (without batch) of the input each conv first saw.
    """
    try:
        return _hooked_pass(model, convs, input_shape, shapes_only=True, input_shapes=input_shapes)
    except Exception:  # noqa: BLE001 - the complete pass below reports the model's real errors
        if input_shapes is not None:
            input_shapes.clear()
        return _hooked_pass(model, convs, input_shape, shapes_only=False, input_shapes=input_shapes)


def _shape_only_forward(conv: nn.Conv2d):
    """A stand-in ``forward`` for ``conv``: zeros of the shape, dtype and device its output would have."""
    same = tf_same(conv)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4) or x.shape[-3] != conv.in_channels:
            raise RuntimeError("input does not fit the convolution")  # the complete pass says how
        size = x.shape[-2:]
        if conv.padding == "same":
            out = tuple(size)
        else:
            padding = (0, 0) if isinstance(conv.padding, str) else conv.padding  # "valid"
            pads = [sum(tf_same_padding(size[i], conv.kernel_size[i], conv.stride[i], conv.dilation[i])) if same
                    else 2 * padding[i] for i in range(2)]
            out = tuple((size[i] + pads[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1) // conv.stride[i] + 1
                        for i in range(2))
        if min(out) < 1:
            raise RuntimeError("input smaller than the kernel")
        return x.new_zeros((*x.shape[:-3], conv.out_channels, *out))

    return forward


def _hooked_pass(model: nn.Module, convs: list[nn.Module], input_shape: tuple[int, ...],
                 shapes_only: bool, input_shapes: dict[int, tuple[int, ...]] | None = None) -> dict[int, int]:
    order: dict[int, int] = {}

    def hook(module, inputs, _output):
        order.setdefault(id(module), len(order))
        if input_shapes is not None and inputs and isinstance(inputs[0], torch.Tensor):
            input_shapes.setdefault(id(module), tuple(inputs[0].shape[1:]))

    handles = [c.register_forward_hook(hook) for c in convs]
    # Only Conv2d forwards filterdb knows (nn.Conv2d's own, timm's and RobustBench's weight-
    # standardized and SAME ones): an unknown forward may compute its output differently, and
    # a forward set on the instance must get it back.
    stand_ins = [c for c in convs if isinstance(c, nn.Conv2d) and known_forward(c) is not None] if shapes_only else []
    was_training = model.training
    try:
        for conv in stand_ins:
            setattr(conv, "forward", _shape_only_forward(conv))  # noqa: B010 (an instance attribute shadowing the class's method, which mypy forbids as an assignment)
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


# ----------------------------------------------------------------------------- probes

def probe_error(module: ConvLike, weight: torch.Tensor, input_shape: tuple[int, ...]) -> float:
    """max |module(x) - F.conv2d(x, weight)| / max |module(x)| on one seeded random input
    (a CondConv2d: a random routing, against the same mixture of the stored expert kernels)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((1, *input_shape), generator=generator).to(weight.device, weight.dtype)
    with torch.no_grad():
        if _is_condconv(module):
            routing = torch.rand((1, module.num_experts), generator=generator).to(weight.device, weight.dtype)
            output = module(x, routing)
            mixed = torch.einsum("e,eoikl->oikl", routing[0], weight)
            bias = routing[0] @ module.bias if module.bias is not None else None
            expected = convolve(module, x, mixed, bias)
        else:
            output = module(x)
            expected = convolve(module, x, weight, module.bias)
    if output.shape != expected.shape:
        return math.inf
    scale = output.abs().max().item()
    return (output - expected).abs().max().item() / (scale if scale > 0 else 1.0)


def _probe_shape(module: ConvLike, seen: tuple[int, ...] | None) -> tuple[int, ...]:
    if seen is not None and len(seen) == 3:
        return seen
    size = max(8, *((k - 1) * d + 1 for k, d in zip(module.kernel_size, module.dilation)))
    return (module.in_channels, size, size)


def _check_probe(model_name: str, name: str, module: nn.Module, weight: torch.Tensor, kind: str,
                 seen: tuple[int, ...] | None) -> None:
    probed = module
    if "probe_verified" in kind:  # an unknown forward may keep state: probe a copy of it
        try:
            probed = copy.deepcopy(module)
        except Exception:  # noqa: BLE001 - an uncopyable module is probed in place
            probed = module
    try:
        error = probe_error(probed, weight, _probe_shape(module, seen))
    except Exception as exc:  # noqa: BLE001 - a forward that needs more than one input, say
        raise FilterDBError(f"{model_name}, layer {name} ({type(module).__name__}): its own forward could not be "
                            f"probed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}), "
                            "so filterdb cannot tell which filters it applies; no filters were stored") from exc
    tolerance = PROBE_TOLERANCE.get(weight.dtype, 1e-2)
    if not error <= tolerance:
        raise FilterDBError(f"{model_name}, layer {name} ({type(module).__name__}, weight_kind {kind}): its forward "
                            f"does not convolve with the weight filterdb would store (relative error {error:.3g} on a "
                            "probe input), so its effective filters are unknown; no filters were stored - "
                            "report the class to filterdb so that it learns how the layer computes its weight")


# ----------------------------------------------------------------------------- layers

def _padding_text(module: ConvLike) -> str:
    if tf_same(module):
        return "tf_same"
    if isinstance(module.padding, str):
        return module.padding
    return ",".join(str(int(p)) for p in module.padding)


def extract_layers(model: nn.Module, input_shape: tuple[int, int, int], *, member: int = 0,
                   model_name: str = "model", check_values: bool = True) -> list[ExtractedLayer]:
    """Extract the convolutions of one network, reached ones in execution order, then unreached ones.

    NaN/Inf weights raise ``FilterDBError`` unless ``check_values`` is false (``write_shard``
    checks them itself, while it writes). A CondConv2d gives one layer per expert, all at the
    module's place in the order.
    """
    named = conv_modules(model)
    if not named:
        raise FilterDBError(f"{model_name}: the model has no Conv2d layers, so there are no filters to store; "
                            "check that the right architecture was built")
    seen: dict[int, tuple[int, ...]] = {}
    try:
        order = execution_order(model, [m for _, m in named], input_shape, input_shapes=seen)
    except Exception as exc:  # noqa: BLE001 - any failure of user code in forward
        shape = "x".join(map(str, input_shape))
        raise FilterDBError(f"{model_name}: forward pass on a 1x{shape} input failed ({type(exc).__name__}: {exc}); "
                            "give the model's input shape (--input-shape C,H,W)") from exc

    reached = sorted((order[id(m)], name, m) for name, m in named if id(m) in order)
    unreached = [(-1, name, m) for name, m in named if id(m) not in order]
    n_reached = len(reached)
    layers: list[ExtractedLayer] = []
    probed_kinds: set[str] = set()
    was_training = model.training
    model.eval()  # the probes must not run training-mode code (spectral norm's power iteration, say)
    try:
        for depth, (exec_order, name, m) in enumerate([*reached, *unreached]):
            if exec_order < 0:
                depth, norm = -1, float("nan")
            else:
                norm = depth / (n_reached - 1) if n_reached > 1 else 0.0
            position = {"member": member, "exec_order": exec_order, "conv_depth": depth, "conv_depth_norm": norm}
            if _is_condconv(m):
                weight = _condconv_experts(m)
                kind = "condconv_expert"
                layers.extend(_layer(m, f"{name}:expert{e}", position, expert, kind, model_name)
                              for e, expert in enumerate(weight))
            else:
                weight, kind = effective_weight(m)
                layers.append(_layer(m, name, position, weight, kind, model_name))
            if kind != "plain" and (kind not in probed_kinds or "probe_verified" in kind):
                _check_probe(model_name, name, m, weight, kind, seen.get(id(m)))
                probed_kinds.add(kind)
    finally:
        model.train(was_training)
    if check_values:
        for layer in layers:
            layer.check_finite()
    return layers


def _condconv_experts(module: ConvLike) -> torch.Tensor:
    """timm CondConv2d's experts, (num_experts, out, in/groups, kh, kw): its forward views the mixture
    ``routing @ weight`` (num_experts x out*in/groups*kh*kw) as the weight shape, row-major."""
    return module.weight.detach().view(module.num_experts, *module.weight_shape)


def _layer(m: ConvLike, name: str, position: dict, weight: torch.Tensor, kind: str,
           model_name: str) -> ExtractedLayer:
    if weight.dim() != 4:
        raise FilterDBError(f"{model_name}, layer {name}: weight has shape {tuple(weight.shape)}, expected 4-D")
    out_c, in_per_group, kh, kw = weight.shape
    info = {
        **position,
        "name": name,
        "reached": position["exec_order"] >= 0,
        "in_channels": int(m.in_channels),
        "out_channels": int(out_c),
        "groups": int(m.groups),
        "kernel": kernel_name(kh, kw),
        "kernel_h": int(kh),
        "kernel_w": int(kw),
        "stride_h": int(m.stride[0]),
        "stride_w": int(m.stride[1]),
        "padding": _padding_text(m),
        "padding_mode": str(getattr(m, "padding_mode", "zeros")),
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
