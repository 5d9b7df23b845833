"""RobustBench ids as model strings: every id parses, and builds with random weights (meta device)
unless its constructor downloads weights or needs CUDA; native architectures match RobustBench's."""
from __future__ import annotations

import os

import pytest
import torch

from filterdb.training import ModelBuildError, ModelStringError, create_model, list_models, parse_model_string
from filterdb.training.models import robustbench_ids

# constructors that call timm / torchvision with pretrained=True
DOWNLOADS = {
    "cifar10/Linf/Debenedetti2022Light_XCiT-S12", "cifar10/Linf/Debenedetti2022Light_XCiT-M12",
    "cifar10/Linf/Debenedetti2022Light_XCiT-L12", "cifar100/Linf/Debenedetti2022Light_XCiT-S12",
    "cifar100/Linf/Debenedetti2022Light_XCiT-M12", "cifar100/Linf/Debenedetti2022Light_XCiT-L12",
    "imagenet/Linf/Standard_R50", "imagenet/Linf/Debenedetti2022Light_XCiT-S12",
    "imagenet/Linf/Debenedetti2022Light_XCiT-M12", "imagenet/Linf/Debenedetti2022Light_XCiT-L12",
    "imagenet/corruptions/Standard_R50", "imagenet/corruptions/AlexNet",
    "imagenet/corruptions/Tian2022Deeper_DeiT-S", "imagenet/corruptions/Tian2022Deeper_DeiT-B",
}
# constructors that move the model to CUDA
NEEDS_CUDA = {"cifar10/Linf/Bai2023Improving_edm", "cifar100/Linf/Bai2023Improving_edm",
              "cifar100/Linf/Bai2023Improving_trades"}
# constructors that read tensor values (timm's drop-path schedule, weight copies): real device only
NOT_ON_META = {
    "cifar10/Linf/Kang2021Stable", "cifar10/Linf/Bai2024MixedNUTS", "cifar100/Linf/Bai2024MixedNUTS",
    "imagenet/Linf/Bai2024MixedNUTS", "imagenet/Linf/Singh2023Revisiting_ViT-S-ConvStem",
    "imagenet/Linf/Singh2023Revisiting_ViT-B-ConvStem", "imagenet/Linf/Singh2023Revisiting_ConvNeXt-T-ConvStem",
    "imagenet/Linf/Singh2023Revisiting_ConvNeXt-S-ConvStem", "imagenet/Linf/Singh2023Revisiting_ConvNeXt-B-ConvStem",
    "imagenet/Linf/Singh2023Revisiting_ConvNeXt-L-ConvStem", "imagenet/Linf/Liu2023Comprehensive_ConvNeXt-B",
    "imagenet/Linf/Liu2023Comprehensive_ConvNeXt-L", "imagenet/Linf/Liu2023Comprehensive_Swin-B",
    "imagenet/Linf/Liu2023Comprehensive_Swin-L", "imagenet/Linf/Mo2022When_Swin-B", "imagenet/Linf/Mo2022When_ViT-B",
    "imagenet/Linf/Amini2024MeanSparse_ConvNeXt-L", "imagenet/Linf/Amini2024MeanSparse_Swin-L",
    "imagenet/Linf/RodriguezMunoz2024Characterizing_Swin-B", "imagenet/Linf/RodriguezMunoz2024Characterizing_Swin-L",
    "imagenet/Linf/Xu2024MIMIR_Swin-B", "imagenet/Linf/Xu2024MIMIR_Swin-L",
}


@pytest.fixture(scope="module")
def ids() -> list[str]:
    return robustbench_ids.list_ids()


def shapes(model) -> list[tuple[int, ...]]:
    return sorted(tuple(p.shape) for p in model.parameters())


def test_every_id_parses_and_round_trips(ids):
    assert len(ids) > 200 and "cifar10/Linf/Standard" in ids
    for model_id in ids:
        model_string = "robustbench:" + model_id
        spec = parse_model_string(model_string)
        assert (spec.family, spec.variant, str(spec)) == ("robustbench", model_id, model_string)
    assert set(list_models(robustbench=True)) - set(list_models()) == {"robustbench:" + i for i in ids}


def test_downloading_constructors_are_refused_by_name(ids):
    assert {i for i in ids if robustbench_ids.downloads_weights(i)} == DOWNLOADS
    for model_id in DOWNLOADS:
        with pytest.raises(ModelBuildError, match="downloads pretrained weights") as error:
            create_model("robustbench:" + model_id)
        assert model_id in str(error.value)


def test_every_other_id_builds_with_random_weights(ids):
    failed = {}
    for model_id in sorted(set(ids) - DOWNLOADS):
        try:
            with torch.device("meta"):
                model = create_model("robustbench:" + model_id)
        except ModelBuildError as error:
            assert model_id in str(error)
            failed[model_id] = error
            continue
        assert sum(p.numel() for p in model.parameters()) > 0
    assert set(failed) <= NOT_ON_META | NEEDS_CUDA, sorted(set(failed) - NOT_ON_META - NEEDS_CUDA)
    assert len(failed) <= len(NOT_ON_META | NEEDS_CUDA)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the constructor works where CUDA is")
def test_cuda_only_constructors_fail_by_name():
    for model_id in NEEDS_CUDA:
        with pytest.raises(ModelBuildError, match="constructor failed") as error:
            create_model("robustbench:" + model_id)
        assert model_id in str(error.value)


def test_a_timm_based_id_builds_and_runs_on_cpu():
    torch.manual_seed(0)
    model = create_model("robustbench:imagenet/Linf/Singh2023Revisiting_ViT-S-ConvStem").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FILTERDB_SLOW_TESTS"), reason="set FILTERDB_SLOW_TESTS=1 (minutes, ~8 GB of memory)")
def test_meta_incompatible_ids_build_on_cpu():
    for model_id in sorted(NOT_ON_META):
        assert sum(p.numel() for p in create_model("robustbench:" + model_id).parameters()) > 0


def test_random_weights_follow_the_seed():
    torch.manual_seed(3)
    a = create_model("robustbench:cifar10/L2/Rice2020Overfitting")
    torch.manual_seed(3)
    b = create_model("robustbench:cifar10/L2/Rice2020Overfitting")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("native, robustbench_id", [
    ("wrn28-10", "cifar10/Linf/Standard"),
    ("wrn34-10", "cifar10/Linf/Sehwag2021Proxy"),
    ("wrn70-16", "cifar10/Linf/Gowal2020Uncovering_70_16"),
    ("preactresnet18", "cifar10/L2/Rice2020Overfitting"),
    ("wrn-a4", "cifar10/Linf/Huang2022Revisiting_WRN-A4"),
])
def test_native_architectures_match_robustbench(native, robustbench_id):
    with torch.device("meta"):
        assert shapes(create_model(native)) == shapes(create_model("robustbench:" + robustbench_id))


def test_class_count_is_the_datasets():
    with torch.device("meta"):
        model = create_model("robustbench:cifar100/Linf/Rice2020Overfitting")
        assert model(torch.empty(1, 3, 32, 32)).shape == (1, 100)
        assert create_model("robustbench:cifar100/Linf/Rice2020Overfitting", num_classes=100, in_chans=3) is not None
    with pytest.raises(ModelBuildError, match="100 classes"):
        create_model("robustbench:cifar100/Linf/Rice2020Overfitting", num_classes=10)


@pytest.mark.parametrize("bad, complaint", [
    ("robustbench:cifar10/Linf/NoSuchModel", "Standard"),
    ("robustbench:cifar10/Linf", "<dataset>/<threat model>/<name>"),
    ("robustbench:mnist/Linf/Standard", "cifar10/Linf"),
])
def test_unknown_ids_are_rejected(bad, complaint):
    with pytest.raises(ModelStringError) as error:
        parse_model_string(bad)
    assert complaint in str(error.value)
