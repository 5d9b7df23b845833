"""Extraction reads every convolution, its effective weight, in execution order."""
import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from filterdb.errors import FilterDBError
from filterdb.extract import _hooked_pass, extract_layers, extract_members


class ReversedDefinition(nn.Module):
    """Defines its convolutions in the opposite order of use, plus one never used."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Conv2d(4, 4, 5)
        self.last = nn.Conv2d(8, 4, 1)
        self.middle = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.first = nn.Conv2d(3, 8, 7, stride=2, padding=3, padding_mode="reflect")

    def forward(self, x):
        return self.last(torch.relu(self.middle(self.first(x))))


def test_execution_order_not_definition_order():
    layers = extract_layers(ReversedDefinition(), (3, 16, 16))
    assert [layer.info["name"] for layer in layers] == ["first", "middle", "last", "unused"]
    assert [layer.info["conv_depth"] for layer in layers] == [0, 1, 2, -1]
    assert [layer.info["conv_depth_norm"] for layer in layers[:3]] == [0.0, 0.5, 1.0]
    assert math.isnan(layers[3].info["conv_depth_norm"])
    assert [layer.info["reached"] for layer in layers] == [True, True, True, False]
    first, middle = layers[0].info, layers[1].info
    assert (first["kernel"], first["stride_h"], first["padding"], first["padding_mode"]) == ("7x7", 2, "3,3", "reflect")
    assert (middle["groups"], middle["n_filters"]) == (4, 8 * 2)


def test_filters_are_out_channel_major():
    conv = nn.Conv2d(2, 3, 3)
    (layer,) = extract_layers(nn.Sequential(conv), (2, 5, 5))
    f = layer.filters()
    assert f.shape == (6, 3, 3)
    for o in range(3):
        for i in range(2):
            assert np.array_equal(f[o * 2 + i], conv.weight[o, i].detach().numpy())


def test_weight_norm_and_parametrized_give_effective_weight():
    torch.manual_seed(0)
    wn = torch.nn.utils.weight_norm(nn.Conv2d(3, 4, 3))
    with torch.no_grad():
        wn.weight_g.mul_(3.0)  # the cached .weight is now stale
    expected_wn = torch._weight_norm(wn.weight_v, wn.weight_g, 0)

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    pc = nn.Conv2d(4, 4, 3)
    torch.nn.utils.parametrize.register_parametrization(pc, "weight", Double())
    model = nn.Sequential(wn, pc)
    layers = extract_layers(model, (3, 8, 8))
    assert layers[0].info["weight_kind"] == "weight_norm"
    assert np.array_equal(layers[0].filters(), expected_wn.detach().numpy().reshape(-1, 3, 3))
    assert layers[1].info["weight_kind"] == "parametrized"
    assert np.array_equal(layers[1].filters(), 2 * pc.parametrizations.weight.original.detach().numpy().reshape(-1, 3, 3))


def test_conv_subclass_is_found():
    class StdConv(nn.Conv2d):
        pass

    layers = extract_layers(nn.Sequential(StdConv(1, 2, 3)), (1, 6, 6))
    assert len(layers) == 1 and layers[0].info["n_filters"] == 2


def test_real_architecture_counts():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    layers = extract_layers(model, (3, 32, 32))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(layers) == len(convs) == 52
    assert sum(layer.info["n_filters"] for layer in layers) == sum(c.weight.shape[0] * c.weight.shape[1] for c in convs)
    depthwise = [layer for layer in layers if layer.info["groups"] > 1]
    assert depthwise and all(layer.info["groups"] == layer.info["in_channels"] == layer.info["out_channels"] for layer in depthwise)


def test_no_convolutions_is_a_clear_error():
    with pytest.raises(FilterDBError, match="mlp: the model has no Conv2d layers"):
        extract_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (1, 2, 2), model_name="mlp")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_name_model_and_layer(bad):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3))
    with torch.no_grad():
        model[1].weight[0, 0, 1, 1] = bad
    with pytest.raises(FilterDBError, match=r"mymodel, layer 1: 1 weight\(s\) are NaN or Inf"):
        extract_layers(model, (1, 8, 8), model_name="mymodel")


def test_failing_forward_names_the_input_shape():
    with pytest.raises(FilterDBError, match="forward pass on a 1x3x4x4 input failed"):
        extract_layers(nn.Sequential(nn.Conv2d(1, 2, 3)), (3, 4, 4), model_name="m")


def test_ensemble_members_are_numbered():
    members = [nn.Sequential(nn.Conv2d(3, 4, 3)), nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))]
    layers = extract_members(members, (3, 8, 8))
    assert [(layer.info["member"], layer.info["layer_index"], layer.info["conv_depth_norm"]) for layer in layers] == [
        (0, 0, 0.0), (1, 1, 0.0), (1, 2, 1.0)]


class DataDependent(nn.Module):
    """Checks its activations, which the shapes-only pass leaves at zero; the complete pass must run it."""

    def __init__(self):
        super().__init__()
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if y.abs().sum().item() == 0:
            raise ValueError("dead activations")
        y = self.b(y)
        return self.c(y)


@pytest.mark.parametrize("build", [
    lambda: torchvision.models.resnet18(num_classes=10),
    lambda: torchvision.models.mobilenet_v2(num_classes=10),
    lambda: torchvision.models.densenet121(num_classes=10),
    ReversedDefinition,
    lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding="same"), nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
                          nn.Conv2d(4, 4, 5, dilation=2, stride=2)),
], ids=["resnet18", "mobilenet_v2", "densenet121", "reversed", "padding-dilation"])
def test_shapes_only_pass_gives_the_real_order_and_leaves_weights_alone(build):
    torch.manual_seed(0)
    model = build().train()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = _hooked_pass(model, convs, (3, 32, 32), shapes_only=True)
    real = _hooked_pass(model, convs, (3, 32, 32), shapes_only=False)
    assert fast == real and len(fast) >= 3
    assert model.training
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())


def test_value_dependent_forward_falls_back_to_the_complete_pass():
    model = DataDependent()
    with pytest.raises(ValueError, match="dead activations"):
        _hooked_pass(model, [model.a, model.b, model.c], (3, 8, 8), shapes_only=True)
    layers = extract_layers(model, (3, 8, 8))
    assert [layer.info["name"] for layer in layers] == ["a", "b", "c"]
    assert all(layer.weight.device.type == "cpu" for layer in layers)


def test_a_forward_set_on_the_instance_is_kept_and_used():
    conv = nn.Conv2d(1, 2, 3)
    calls = []

    def patched(x):
        calls.append(tuple(x.shape))
        return nn.Conv2d.forward(conv, x)

    conv.forward = patched
    layers = extract_layers(nn.Sequential(conv), (1, 5, 5))
    # the order pass, then the probe of the unknown forward (on the input shape the pass saw)
    assert [layer.info["name"] for layer in layers] == ["0"] and calls == [(1, 1, 5, 5), (1, 1, 5, 5)]
    assert layers[0].info["weight_kind"] == "probe_verified"
    assert conv.forward is patched


def test_a_subclass_replacing_conv_forward_is_probed():
    class Centered(nn.Conv2d):
        def _conv_forward(self, x, weight, bias):
            return super()._conv_forward(x, weight - weight.mean(), bias)

    with pytest.raises(FilterDBError, match=r"net, layer 0 \(Centered, weight_kind probe_verified\)"):
        extract_layers(nn.Sequential(Centered(1, 2, 3)), (1, 6, 6), model_name="net")


def test_an_unknown_forward_pre_hook_is_probed():
    from timm.layers import StdConv2d

    harmless, doubling = StdConv2d(1, 2, 3), nn.Conv2d(1, 2, 3)
    harmless.register_forward_pre_hook(lambda module, inputs: None)
    doubling.register_forward_pre_hook(lambda module, inputs: (2 * inputs[0],))
    (layer,) = extract_layers(nn.Sequential(harmless), (1, 6, 6))
    assert layer.info["weight_kind"] == "std_conv+probe_verified"
    with pytest.raises(FilterDBError, match=r"layer 0 \(Conv2d, weight_kind probe_verified\)"):
        extract_layers(nn.Sequential(doubling), (1, 6, 6))


def test_a_forward_that_applies_other_filters_is_refused_by_model_and_layer():
    class Negated(nn.Conv2d):
        def forward(self, x):
            return nn.functional.conv2d(x, -self.weight, self.bias, self.stride, self.padding)

    model = nn.Sequential(nn.Conv2d(1, 2, 3), Negated(2, 2, 3))
    with pytest.raises(FilterDBError, match=r"mynet, layer 1 \(Negated, weight_kind probe_verified\): its forward "
                                            r"does not convolve with the weight filterdb would store"):
        extract_layers(model, (1, 8, 8), model_name="mynet")


def known_forward_convs():
    from timm.layers import Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame

    from filterdb.compat import import_robustbench
    import_robustbench()
    from robustbench.model_zoo.architectures import bit_rn_v2

    return [ScaledStdConv2d(3, 4, 3), ScaledStdConv2d(3, 4, 5, stride=2, dilation=2), StdConv2d(3, 4, 3, stride=2),
            StdConv2dSame(3, 4, 3, stride=2), ScaledStdConv2dSame(3, 4, 4, stride=3), Conv2dSame(3, 4, 2, stride=2),
            Conv2dSame(3, 4, 7, stride=1, dilation=2), bit_rn_v2.StdConv2d(3, 4, 3, padding=1, stride=2)]


@pytest.mark.parametrize("size", [(7, 7), (8, 13), (16, 9)])
def test_shape_only_stand_ins_of_known_forwards_give_the_real_output_shape(size):
    from filterdb.extract import _shape_only_forward

    x = torch.rand(1, 3, *size)
    for conv in known_forward_convs():
        with torch.no_grad():
            assert _shape_only_forward(conv)(x).shape == conv(x).shape, (type(conv).__name__, size)


def test_scaled_std_conv_takes_the_shapes_only_path_and_unknown_forwards_do_not():
    from timm.layers import ScaledStdConv2d

    class OwnForward(nn.Conv2d):
        def forward(self, x):
            return super().forward(x)

    model = nn.Sequential(ScaledStdConv2d(3, 4, 3, padding=1), nn.ReLU(), OwnForward(4, 4, 3))
    seen = {}

    def record(key):
        def hook(module, inputs, output):
            seen[key] = (float(inputs[0].abs().sum()), float(output.abs().sum()))
        return hook

    handles = [m.register_forward_hook(record(key)) for key, m in (("scaled", model[0]), ("own", model[2]))]
    _hooked_pass(model, [model[0], model[2]], (3, 8, 8), shapes_only=True)
    for h in handles:
        h.remove()
    assert seen["scaled"][1] == 0.0  # a stand-in: zeros of the output's shape
    assert seen["own"][0] == 0.0 and seen["own"][1] > 0.0  # ran its own forward (zeros in, its bias out)
