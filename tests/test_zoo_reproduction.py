"""Regression over representative timm and RobustBench architectures (random weights, offline, small
inputs): every layer stored in the database, convolved with F.conv2d, reproduces the module's
output on a probe input. The larger sweep over the zoos is bench/sweep_zoo.py."""
from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
from conv_reproduction import reproduction_errors
from timm.layers import StdConv2d
from timm.models.resnetv2 import ResNetV2

from filterdb.build import add_module
from filterdb.compat import import_robustbench
from filterdb.store import FilterDB, open_database
from filterdb.training import create_model

FLOAT32 = 2e-6


def bit_resnetv2_timm():
    """timm's BiT ResNetV2 (resnetv2_50x1_bit's configuration: StdConv2d with eps 1e-8), one block per stage."""
    return ResNetV2(layers=[1, 1, 1, 1], stem_type="fixed", conv_layer=partial(StdConv2d, eps=1e-8), num_classes=10)


def bit_resnetv2_robustbench():
    """RobustBench's bit_rn_v2.ResNetV2 (MixedNUTS' standard network), one block per stage."""
    import_robustbench()
    from robustbench.model_zoo.architectures import bit_rn_v2

    return bit_rn_v2.ResNetV2([1, 1, 1, 1], 1, head_size=10)


ARCHITECTURES = {
    # name: (constructor, probe input, weight kinds expected among the layers)
    "timm-bit-resnetv2": (bit_resnetv2_timm, (3, 64, 64), {"std_conv", "plain"}),
    "timm-nf_regnet_b0": (lambda: timm.create_model("nf_regnet_b0", num_classes=10), (3, 64, 64),
                          {"scaled_std_conv", "plain"}),
    "timm-vit_tiny_r_s16_p8_224": (lambda: timm.create_model("vit_tiny_r_s16_p8_224", num_classes=10),
                                   (3, 224, 224), {"std_conv_same", "plain"}),
    "timm-tf_mobilenetv3_small_minimal_100": (lambda: timm.create_model("tf_mobilenetv3_small_minimal_100"),
                                              (3, 64, 64), {"conv2d_same", "plain"}),
    "robustbench-bit_rn_v2": (bit_resnetv2_robustbench, (3, 32, 32), {"bit_std_conv", "plain"}),
    "robustbench-cifar10/L2/Rice2020Overfitting": (lambda: create_model("robustbench:cifar10/L2/Rice2020Overfitting"),
                                                   (3, 32, 32), {"plain"}),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_stored_layer_reproduces_the_module(tmp_path, name):
    build, input_shape, kinds = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = build().eval()
    with FilterDB.open(tmp_path / "db", "a") as db:
        model_id = add_module(db, model, source="demo", name=name, input_shape=input_shape)
    with open_database(tmp_path / "db") as db:
        layers = db.layers[db.layers["model_id"] == model_id]
        assert set(layers["weight_kind"]) == kinds
        assert layers["reached"].all()
        errors = reproduction_errors(db, model_id, [model], input_shape, seed=5)
    assert len(errors) == len(layers)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= FLOAT32, (worst, errors[worst])
