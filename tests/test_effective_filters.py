"""The database holds each convolution's effective filters: read back from the real HDF5 files,
they reproduce what the layer computes (timm's and RobustBench's weight standardization,
SAME padding, parametrizations, weight and spectral norm, CondConv experts)."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from conv_reproduction import conv_from_row, reproduction_errors, unaccounted_convolutions
from timm.layers import CondConv2d, Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from torch import nn

from filterdb import schema
from filterdb.build import add_module
from filterdb.compat import import_robustbench
from filterdb.extract import WEIGHT_KINDS, skipped_convs
from filterdb.store import FilterDB, open_database

FLOAT32 = 2e-6  # max |output - F.conv2d(input, stored filters)| / max |output|


def bit_conv(version: str):
    import_robustbench()
    from robustbench.model_zoo.architectures import bit_rn, bit_rn_v2

    return {"v1": bit_rn, "v2": bit_rn_v2}[version].StdConv2d(3, 8, 3, stride=2, padding=1, bias=False)


def parametrized():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    return torch.nn.utils.parametrizations.weight_norm(conv)


def scaled(cls, **kwargs):
    conv = cls(3, 8, 3, **kwargs)
    with torch.no_grad():
        conv.gain.uniform_(0.5, 2.0)  # a trained gain, not the initial ones
    return conv


CASES = {
    # name: (constructor, weight_kind, whether the raw .weight would be wrong)
    "StdConv2d": (lambda: StdConv2d(3, 8, 3), "std_conv", True),
    "StdConv2d-eps0.1": (lambda: StdConv2d(3, 8, 3, eps=0.1), "std_conv", True),
    "StdConv2dSame-stride2": (lambda: StdConv2dSame(3, 8, 3, stride=2), "std_conv_same", True),
    "ScaledStdConv2d": (lambda: scaled(ScaledStdConv2d, gamma=1.7, eps=1e-3), "scaled_std_conv", True),
    "ScaledStdConv2dSame-stride2": (lambda: scaled(ScaledStdConv2dSame, stride=2, gamma=1.7),
                                    "scaled_std_conv_same", True),
    "robustbench-bit_rn_v2.StdConv2d": (lambda: bit_conv("v2"), "bit_std_conv", True),
    "robustbench-bit_rn.StdConv2d": (lambda: bit_conv("v1"), "bit_std_conv", True),
    "Conv2dSame-stride2": (lambda: Conv2dSame(3, 8, 4, stride=2), "conv2d_same", False),
    "parametrizations.weight_norm": (parametrized, "parametrized", True),
    "weight_norm": (lambda: torch.nn.utils.weight_norm(nn.Conv2d(3, 8, 3)), "weight_norm", True),
    "spectral_norm": (lambda: torch.nn.utils.spectral_norm(nn.Conv2d(3, 8, 3)), "spectral_norm", True),
    "parametrized StdConv2d": (lambda: torch.nn.utils.parametrizations.weight_norm(StdConv2d(3, 8, 3)),
                               "parametrized+std_conv", True),
}


def raw_weight(layer: nn.Conv2d) -> torch.Tensor:
    """The 4-D parameter a naive reader would take for the filters."""
    if hasattr(layer, "parametrizations"):
        return layer.parametrizations.weight.original1  # weight_norm's v
    if hasattr(layer, "weight_orig"):
        return layer.weight_orig  # spectral_norm
    if hasattr(layer, "weight_g"):
        return layer.weight_v
    return layer.weight


@pytest.fixture(scope="module")
def zoo_db(tmp_path_factory):
    """One real database holding a two-layer network per case (a plain conv, then the case's)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("effective") / "db"
    models = {}
    with FilterDB.open(path, "a") as db:
        for name, (build, _, _) in CASES.items():
            model = nn.Sequential(nn.Conv2d(3, 3, 1), build())
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05)  # filters with a mean, so standardization changes them
            if isinstance(model[1], nn.Conv2d) and hasattr(model[1], "weight_g"):
                with torch.no_grad():
                    model[1].weight_g.mul_(3.0)  # the cached .weight of old-style weight norm is now stale
            models[name] = (add_module(db, model, source="demo", name=name, input_shape=(3, 13, 11)), model)
    with open_database(path) as db:
        yield db, models


@pytest.mark.parametrize("case", list(CASES))
def test_stored_filters_reproduce_the_layer_to_float32_precision(zoo_db, case):
    db, models = zoo_db
    model_id, model = models[case]
    _, kind, raw_is_wrong = CASES[case]
    layers = db.layers[db.layers["model_id"] == model_id].set_index("name")
    assert list(layers["weight_kind"]) == ["plain", kind]
    errors = reproduction_errors(db, model_id, [model], (3, 13, 11))
    assert set(errors) == {(0, "0"), (0, "1")}
    assert max(errors.values()) <= FLOAT32, errors

    # the check can fail: the raw parameter gives another output for the kinds that transform it
    layer = model[1]
    row = layers.loc["1"]
    x = torch.rand(1, 3, 13, 11)
    with torch.no_grad():
        output = layer(x)
        raw_error = ((output - conv_from_row(x, raw_weight(layer), layer.bias, row)).abs().max() / output.abs().max()).item()
    assert (raw_error > 1e-2) == raw_is_wrong, raw_error


def test_padding_of_tf_same_layers_is_named(zoo_db):
    db, models = zoo_db
    rows = db.layers.set_index("model_id")
    assert rows.loc[models["Conv2dSame-stride2"][0]]["padding"].tolist() == ["0,0", "tf_same"]
    assert rows.loc[models["StdConv2dSame-stride2"][0]]["padding"].tolist()[1] == "tf_same"
    assert rows.loc[models["StdConv2d"][0]]["padding"].tolist()[1] == "1,1"  # timm's static padding


def test_every_weight_kind_is_documented():
    doc = next(c.doc for c in schema.LAYER_COLUMNS if c.name == "weight_kind")
    assert all(f"'{kind}'" in doc for kind in WEIGHT_KINDS)


def test_condconv_experts_are_stored_as_layers_and_add_up_to_the_parameters(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_cc_b0_4e", pretrained=False)
    condconvs = {name: m for name, m in model.named_modules() if isinstance(m, CondConv2d)}
    assert len(condconvs) == 24
    with FilterDB.open(tmp_path / "db", "a") as db:
        model_id = add_module(db, model, source="timm", name="efficientnet_cc_b0_4e", input_shape=(3, 64, 64))
    with open_database(tmp_path / "db") as db:
        layers = db.layers[db.layers["model_id"] == model_id]
        stored = layers["n_filters"] * layers["kernel_h"] * layers["kernel_w"]
        for name, conv in condconvs.items():
            experts = layers[layers["name"].str.startswith(name + ":expert")]
            assert list(experts["name"]) == [f"{name}:expert{i}" for i in range(conv.num_experts)]
            assert set(experts["weight_kind"]) == {"condconv_expert"}
            assert len(set(experts["conv_depth"])) == 1 and experts["reached"].all()  # one place in the order
            assert int(stored[experts.index].sum()) == conv.weight.numel()
            expert1 = db.read_layer(experts.iloc[1])
            assert expert1.tobytes() == conv.weight[1].detach().numpy().tobytes()  # expert-major, out-channel-major
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert int(stored.sum()) == sum(m.weight.numel() for m in [*convs, *condconvs.values()])
        assert db.models.loc[model_id, "skipped_convs"] == ""
        errors = reproduction_errors(db, model_id, [model], (3, 64, 64))
        assert len(errors) == len(convs) + len(condconvs) and max(errors.values()) <= FLOAT32


class WithOtherConvolutions(nn.Module):
    """A 2-D network with a Conv1d over channels (ECA style), a ConvTranspose2d and a Conv3d."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.volume = nn.Conv3d(1, 2, (3, 1, 1))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        gate = self.eca(y.mean((2, 3)).unsqueeze(1)).squeeze(1).sigmoid()
        y = y * gate[:, :, None, None]
        return self.head(y) + self.up(y).mean() + self.volume(y.unsqueeze(1)).mean()


def test_other_convolutions_are_listed_as_skipped_with_their_parameter_counts(tmp_path):
    model = WithOtherConvolutions()
    assert [(s["name"], s["class"], s["n_params"]) for s in skipped_convs(model)] == [
        ("eca", "Conv1d", 3), ("up", "ConvTranspose2d", 8 * 4 * 4 + 4), ("volume", "Conv3d", 6 + 2)]
    with FilterDB.open(tmp_path / "db", "a") as db:
        model_id = add_module(db, model, source="demo", name="other", input_shape=(3, 8, 8))
    with open_database(tmp_path / "db") as db:
        assert list(db.layers["name"]) == ["stem", "head"]
        skipped = json.loads(db.models.loc[model_id, "skipped_convs"])
    assert [s["name"] for s in skipped] == ["eca", "up", "volume"] and {s["member"] for s in skipped} == {0}
    direct = sum(p.numel() for p in model.parameters())
    stored = 8 * 3 * 9 + 8 + 2 * 8 + 2  # the two Conv2d layers with their biases
    assert stored + sum(s["n_params"] for s in skipped) == direct
    assert "1-D kernels" in skipped[0]["reason"] and "transposed" in skipped[1]["reason"]


class ConvolvesOutsideConv2d(nn.Module):
    """Convolutions no stored layer accounts for: a module's own parameter through F.conv2d (no kernel_size
    attribute, so not even in skipped_convs), and a Conv2d's weight applied by its parent, not its forward."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bypassed = nn.Conv2d(4, 4, 1)
        self.kernel = nn.Parameter(torch.randn(4, 4, 3, 3))
        self.blur = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False).requires_grad_(False)  # a fixed filter

    def forward(self, x):
        y = self.stem(x)
        y = torch.nn.functional.conv2d(y, self.kernel, padding=1)
        y = self.bypassed._conv_forward(y, self.bypassed.weight * 2, None)
        return self.blur(y)


def test_unaccounted_convolutions_finds_convolutions_outside_the_stored_layers():
    model = ConvolvesOutsideConv2d()
    stored = {(0, "stem"), (0, "bypassed"), (0, "blur")}
    assert unaccounted_convolutions([model], (3, 8, 8), stored) == [(0, "", "ConvolvesOutsideConv2d")]
    assert unaccounted_convolutions([model], (3, 8, 8), stored | {(0, "")}) == []
    assert model.training  # the pass ran in eval mode and gave the mode back
    plain = WithOtherConvolutions()
    assert unaccounted_convolutions([plain], (3, 8, 8), {(0, "stem"), (0, "head")}) == [
        (0, "eca", "Conv1d"), (0, "up", "ConvTranspose2d"), (0, "volume", "Conv3d")]
