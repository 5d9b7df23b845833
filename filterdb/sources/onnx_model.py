"""ONNX models: the filters of each ``Conv`` node, read from the graph's stored tensors, without torch.

The graph is read with the ``onnx`` package and never run. Each 2-D ``Conv`` node whose
weight is a stored tensor (an initializer or a ``Constant`` node, through any ``Identity``
nodes) becomes a layer, in the graph's topological order (the order its nodes execute in),
with its group, strides, pads, dilations and auto_pad from the node's attributes; its
``weight_kind`` is ``onnx_initializer``. What an exporter stored is what the graph
convolves with: ``torch.onnx.export`` in eval mode with constant folding (its default) folds
each BatchNorm into the convolution before it, so those filters are
``weight * gamma / sqrt(running_var + eps)`` per output channel, not the trained conv weight.

Not stored, and listed in the model table's ``skipped_convs`` with the reason: a Conv whose
weight is computed at run time (the output of another node, e.g. ``DequantizeLinear``), a
Conv with 1-D or 3-D kernels, a Conv inside a subgraph (``If``/``Loop``) and the other
operators that convolve (``ConvTranspose``, ``QLinearConv``, ``ConvInteger``, ``DeformConv``).
"""
from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from filterdb.errors import FilterDBError
from filterdb.schema import kernel_name

OTHER_CONVOLUTIONS = {
    "ConvTranspose": "transposed convolution: its weight is the adjoint of a convolution's, not filters of its output",
    "QLinearConv": "quantized convolution: its integer weight needs the node's scale and zero point at run time",
    "ConvInteger": "integer convolution: its weight is quantized and its scale lives outside the node",
    "DeformConv": "deformable convolution: where it samples its input is computed at run time",
}
WEIGHT_KIND = "onnx_initializer"


@dataclass
class ArrayLayer:
    """One layer read without a network: its layer-table row and filters (the ``write_shard`` protocol)."""
    info: dict
    weight: np.ndarray  # (out, in/groups, kh, kw) float32
    model_name: str = "model"

    @property
    def kernel(self) -> str:
        return self.info["kernel"]

    def filters(self) -> np.ndarray:
        return np.ascontiguousarray(self.weight, dtype=np.float32).reshape(-1, *self.weight.shape[-2:])

    def check_finite(self) -> None:
        bad = int((~np.isfinite(self.weight)).sum())
        if bad:
            raise FilterDBError(f"{self.model_name}, layer {self.info['name']}: {bad} weight(s) are NaN or Inf; "
                                "the model file is corrupt or training diverged - re-export it from a healthy run")


def _topological(nodes) -> list[int]:
    """Node indices in topological order (ONNX asks graphs to be sorted; ties keep the file's order)."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    deps = [{producer[name] for name in node.input if name in producer and producer[name] != i}
            for i, node in enumerate(nodes)]
    users: list[list[int]] = [[] for _ in nodes]
    for i, ds in enumerate(deps):
        for d in ds:
            users[d].append(i)
    waiting = [len(ds) for ds in deps]
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise FilterDBError("the ONNX graph has a cycle; it is not a valid model - export it again")
    return order


def _attributes(node) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _padding(attrs: dict) -> str:
    auto = _text(attrs.get("auto_pad", "NOTSET"))
    if auto == "VALID":
        return "valid"
    if auto == "SAME_UPPER":
        return "tf_same"  # the extra pixel at the bottom/right, as TensorFlow's SAME
    if auto == "SAME_LOWER":
        return "same_lower"
    top, left, bottom, right = (list(attrs.get("pads", [0, 0, 0, 0])) + [0, 0, 0, 0])[:4]
    if (top, left) == (bottom, right):
        return f"{int(top)},{int(left)}"
    return f"{int(top)},{int(left)},{int(bottom)},{int(right)}"


def _input_shape(graph, stored: set[str]) -> tuple[int, ...]:
    """C, H, W of the graph's first real input if static, else () (recorded as '')."""
    for value in graph.input:
        if value.name in stored:
            continue
        dims = value.type.tensor_type.shape.dim
        sizes = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
        if len(sizes) == 4 and all(s > 0 for s in sizes[1:]):
            return tuple(int(s) for s in sizes[1:])
        return ()
    return ()


def read_onnx(path: str | Path, label: str | None = None) -> tuple[list[ArrayLayer], dict]:
    """The Conv layers of an ONNX file, in topological order, and model-table facts
    (``skipped_convs``, ``n_params``, ``input_shape``)."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    label = label or str(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - a truncated file, a protobuf error: one line
        raise FilterDBError(f"{label}: not a readable ONNX model ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); export it again") from None
    graph = model.graph
    stored: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kinds = {name: "initializer" for name in stored}
    nodes = list(graph.node)
    alias: dict[str, str] = {}  # Identity output -> its input
    for node in nodes:
        if node.op_type == "Constant" and node.output:
            attrs = _attributes(node)
            if "value" in attrs:
                stored[node.output[0]] = numpy_helper.to_array(attrs["value"])
                kinds[node.output[0]] = "constant"
        elif node.op_type == "Identity" and node.input and node.output:
            alias[node.output[0]] = node.input[0]

    def resolve(name: str) -> str:
        seen = set()
        while name in alias and name not in seen:
            seen.add(name)
            name = alias[name]
        return name

    layers: list[ArrayLayer] = []
    skipped: list[dict] = []
    used_names: set[str] = set()
    for index in _topological(nodes):
        node = nodes[index]
        name = node.name or f"{node.op_type}_{index}"
        if node.op_type in OTHER_CONVOLUTIONS:
            skipped.append({"member": 0, "name": name, "class": node.op_type, "n_params": 0,
                            "reason": OTHER_CONVOLUTIONS[node.op_type]})
            continue
        if node.op_type in ("If", "Loop", "Scan"):
            inner = sum(n.op_type in ("Conv", *OTHER_CONVOLUTIONS) for a in node.attribute for n in a.g.node)
            if inner:
                skipped.append({"member": 0, "name": name, "class": node.op_type, "n_params": 0,
                                "reason": f"{inner} convolution(s) inside a subgraph, which runs conditionally"})
            continue
        if node.op_type != "Conv":
            continue
        weight_name = resolve(node.input[1]) if len(node.input) > 1 else ""
        if weight_name not in stored:
            skipped.append({"member": 0, "name": name, "class": "Conv", "n_params": 0,
                            "reason": f"its weight {node.input[1]!r} is computed at run time (not a stored tensor)"})
            continue
        weight = stored[weight_name]
        if weight.ndim != 4:
            skipped.append({"member": 0, "name": name, "class": "Conv", "n_params": int(weight.size),
                            "reason": f"{weight.ndim - 2}-D kernels do not fit the database's (N, kh, kw) filter arrays"})
            continue
        if not np.issubdtype(weight.dtype, np.floating):
            skipped.append({"member": 0, "name": name, "class": "Conv", "n_params": int(weight.size),
                            "reason": f"its weight is {weight.dtype}, not floating point"})
            continue
        attrs = _attributes(node)
        group = int(attrs.get("group", 1))
        strides = list(attrs.get("strides", [1, 1]))
        dilations = list(attrs.get("dilations", [1, 1]))
        out_c, in_per_group, kh, kw = (int(s) for s in weight.shape)
        unique = name
        while unique in used_names:
            unique = f"{name}#{len(used_names)}"
        used_names.add(unique)
        info = {
            "member": 0, "name": unique, "in_channels": in_per_group * group, "out_channels": out_c,
            "groups": group, "kernel": kernel_name(kh, kw), "kernel_h": kh, "kernel_w": kw,
            "stride_h": int(strides[0]), "stride_w": int(strides[1]), "padding": _padding(attrs),
            "padding_mode": "zeros", "dilation_h": int(dilations[0]), "dilation_w": int(dilations[1]),
            "has_bias": len(node.input) > 2 and bool(node.input[2]),
            "weight_kind": WEIGHT_KIND, "n_filters": out_c * in_per_group,
        }
        # float16/bfloat16 values are float32 values exactly; float64 ones are rounded as the torch path does
        layers.append(ArrayLayer(info, np.asarray(weight, dtype=np.float32), model_name=label))
    if not layers:
        why = f"; {len(skipped)} convolution node(s) skipped: {skipped[0]['reason']}" if skipped else ""
        raise FilterDBError(f"{label}: the ONNX graph has no Conv node with a stored 2-D weight, so there are no "
                            f"filters to store{why}")
    n = len(layers)
    for depth, layer in enumerate(layers):
        layer.info.update(layer_index=depth, exec_order=depth, reached=True, conv_depth=depth,
                          conv_depth_norm=depth / (n - 1) if n > 1 else 0.0)
    facts = {"skipped_convs": json.dumps(skipped) if skipped else "",
             "n_params": int(sum(a.size for n_, a in stored.items() if kinds.get(n_) == "initializer")),
             "input_shape": _input_shape(graph, set(stored))}
    return layers, facts
