"""Group expressions and layer selectors."""
import numpy as np
import pandas as pd
import pytest

from filterdb.analysis.groups import DECILE_LABELS, parse_group, select_layers, select_models
from filterdb.errors import FilterDBError
from filterdb.schema import MODEL_COLUMNS


@pytest.fixture
def models():
    rows = [("a", "robust", "cifar10", "WideResNet-28-10"), ("b", "robust", "cifar100", "WideResNet-28-10"),
            ("c", "normal", "cifar10", "PreActResNet-18"), ("d", "normal", "cifar10", "WideResNet-28-10")]
    frame = pd.DataFrame({c.name: [c.missing] * len(rows) for c in MODEL_COLUMNS})
    frame[["model_id", "training", "dataset", "architecture"]] = rows
    frame["extra_data"] = [False, True, False, False]
    return frame.set_index("model_id", drop=False)


def test_parse_keywords_columns_and_aliases():
    assert parse_group("robust") == [("training", "robust")]
    assert parse_group("Normal, dataset=cifar10,arch=WRN") == [
        ("training", "normal"), ("dataset", "cifar10"), ("architecture", "WRN")]


def test_select_models_combines_conditions(models):
    assert list(select_models(models, "robust").index) == ["a", "b"]
    assert list(select_models(models, "dataset=CIFAR10,arch=WideResNet-28-10").index) == ["a", "d"]
    assert list(select_models(models, "extra_data=true").index) == ["b"]


def test_unknown_column_lists_the_valid_ones(models):
    with pytest.raises(FilterDBError, match=r"unknown model column 'colour'.*dataset.*arch \(= architecture\)"):
        select_models(models, "colour=red")
    with pytest.raises(FilterDBError, match="neither a keyword"):
        select_models(models, "adversarial")


def test_unknown_value_and_empty_group_list_the_values_present(models):
    with pytest.raises(FilterDBError, match="no dataset=imagenet; dataset values there: cifar10, cifar100"):
        select_models(models, "dataset=imagenet")
    with pytest.raises(FilterDBError, match="among models with training=normal; dataset values there: cifar10$"):
        select_models(models, "normal,dataset=cifar100")


def layer_table():
    """Model m: 11 reached convs (depth 0..10) and one unreached; model e: an ensemble of 2 x 3 convs."""
    rows = [("m", 0, d, d / 10, True) for d in range(11)] + [("m", 0, -1, np.nan, False)]
    rows += [("e", member, d, d / 2, True) for member in (0, 1) for d in range(3)]
    frame = pd.DataFrame(rows, columns=["model_id", "member", "conv_depth", "conv_depth_norm", "reached"])
    frame["layer_index"] = frame.groupby("model_id").cumcount()
    return frame


def test_first_last_all_and_indices():
    layers = layer_table()
    first = select_layers(layers, "first")
    assert sorted(zip(first["model_id"], first["member"])) == [("e", 0), ("e", 1), ("m", 0)]
    assert (first["conv_depth"] == 0).all() and set(first["layers"]) == {"first"}
    last = select_layers(layers, "last")
    assert sorted(zip(last["model_id"], last["conv_depth"])) == [("e", 2), ("e", 2), ("m", 10)]
    assert len(select_layers(layers, "all")) == len(layers)  # unreached layers included
    assert list(select_layers(layers, "3")["conv_depth"]) == [3]
    assert list(select_layers(layers, -2)["conv_depth"]) == [9, 1, 1]


def test_depth_range_is_closed():
    selected = select_layers(layer_table(), "0.2-0.5")
    assert sorted(selected.loc[selected["model_id"] == "m", "conv_depth"]) == [2, 3, 4, 5]
    assert sorted(selected.loc[selected["model_id"] == "e", "conv_depth"]) == [1, 1]
    with pytest.raises(FilterDBError, match="0 <= LO <= HI <= 1"):
        select_layers(layer_table(), "0.5-0.2")
    with pytest.raises(FilterDBError, match="first, last, all, deciles"):
        select_layers(layer_table(), "middle")


def test_deciles_put_the_first_layer_alone_and_are_right_closed():
    selected = select_layers(layer_table(), "deciles")
    m = selected[selected["model_id"] == "m"]
    assert list(m["layers"].astype(str)) == list(DECILE_LABELS)  # depth d/10 -> decile d, 0 on its own
    e = selected[selected["model_id"] == "e"]
    assert list(e["layers"].astype(str)) == ["0", "(0.4, 0.5]", "(0.9, 1]"] * 2


def test_alternative_values(models):
    assert list(select_models(models, "model_id=a|c").index) == ["a", "c"]
    assert list(select_models(models, "normal,dataset=cifar10|cifar100").index) == ["c", "d"]


def test_first_and_last_count_the_layers_given():
    # a 7x7 stem, then 3x3 convs and a 1x1 at the end: after keeping the 3x3 layers, first and last are 3x3
    layers = pd.DataFrame({"model_id": "m", "member": 0, "conv_depth": range(5), "reached": True,
                           "conv_depth_norm": np.arange(5) / 4, "kernel": ["7x7", "3x3", "3x3", "3x3", "1x1"]})
    three = layers[layers["kernel"] == "3x3"]
    assert list(select_layers(three, "first")["conv_depth"]) == [1]
    assert list(select_layers(three, "last")["conv_depth"]) == [3]
    assert list(select_layers(three, "1")["conv_depth"]) == [2]
    assert list(select_layers(layers, "last")["kernel"]) == ["1x1"]
