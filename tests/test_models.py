"""Model strings, the registry and the native architectures (CPU; big models on the meta device)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from filterdb.training import (
    ModelStringError,
    check_input_size,
    create_model,
    describe_models,
    list_models,
    min_input_size,
    parse_model_string,
)
from filterdb.training.models.layers import center_crop

CANONICAL = [
    "cnn4-16", "cnn2-8_k5_nopad_silu", "resnet8-8", "resnet20-16", "resnet20-16_k7_reflect", "resnet20-16_nopad",
    "resnet32-16_replicate", "resnet56-64_k5_circular_gelu", "preactresnet18", "preactresnet34_k5",
    "wrn28-10", "wrn16-4_reflect_elu", "robustresnet-a1", "robustresnet-a4_k5_replicate", "wrn-a1", "wrn-a3_nopad",
    "resnet20-16_k9", "cnn1-1_k1", "resnet14-32_softplus", "wrn10-1_leakyrelu", "resnet20-16_nopadcrop",
    "wrn-a3_k5_nopadcrop", "preactresnet18_nopad",
]
PADDINGS = {"zeros": "zeros", "reflect": "reflect", "replicate": "replicate", "circular": "circular", "nopad": "none",
            "nopadcrop": "crop"}


def meta_model(model_string: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(model_string, **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_string", CANONICAL)
def test_canonical_strings_round_trip_and_build(model_string):
    assert str(parse_model_string(model_string)) == model_string
    model = meta_model(model_string, num_classes=7, in_chans=3)
    side = min_input_size(model_string) if "nopad" in model_string else 32
    assert model(torch.empty(2, 3, side, side, device="meta")).shape == (2, 7)


@pytest.mark.parametrize("written, canonical", [
    ("resnet20-16_reflect_k5", "resnet20-16_k5_reflect"),
    ("resnet20-16_k3_zeros_relu", "resnet20-16"),
    ("wrn28-10_silu_nopad", "wrn28-10_nopad_silu"),
    ("robustresnet-a2_gelu_k7", "robustresnet-a2_k7_gelu"),
])
def test_options_in_any_order_give_the_canonical_string(written, canonical):
    assert str(parse_model_string(written)) == canonical
    assert parse_model_string(written) == parse_model_string(canonical)


def test_parse_result_fields():
    spec = parse_model_string("resnet20-16_k5_reflect")
    assert (spec.family, spec.depth, spec.width, spec.kernel_size, spec.padding, spec.activation) == (
        "resnet", 20, 16, 5, "reflect", "relu")
    assert parse_model_string("resnet20-16_nopad").padding == "none"
    assert parse_model_string("resnet20-16_nopadcrop").padding == "crop"
    assert parse_model_string("robustresnet-a3").variant == "a3"


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ModelStringError) as error:
        parse_model_string("resnet20-16_k5_foo")
    message = str(error.value)
    assert "'foo'" in message
    for valid in ("k<odd>", "zeros", "reflect", "replicate", "circular", "nopad", "nopadcrop", "relu", "silu", "gelu"):
        assert valid in message


def test_unknown_model_lists_the_families():
    with pytest.raises(ModelStringError) as error:
        parse_model_string("vgg16")
    for family in ("cnn<depth>-<width>", "resnet<depth>-<width>", "preactresnet<depth>", "wrn<depth>-<width>",
                   "robustresnet-a1|a2|a3|a4", "wrn-a1|a2|a3|a4", "robustbench:"):
        assert family in str(error.value)


@pytest.mark.parametrize("bad, complaint", [
    ("resnet21-16", "6n + 2"), ("resnet2-16", "6n + 2"), ("wrn27-10", "6n + 4"), ("preactresnet50", "18 or 34"),
    ("resnet20-16_k4", "odd"), ("resnet20-16_k5_k7", "more than one kernel size"),
    ("resnet20-16_reflect_nopad", "more than one padding"), ("resnet20-16_relu_silu", "more than one activation"),
    ("resnet20", "unknown model"), ("resnet020-16", "unknown model"), ("robustresnet-a5", "unknown model"),
    ("resnet20-16_", "unknown option ''"), ("resnet20-16_K5", "unknown option 'K5'"), ("resnet20-16_k05", "unknown option"),
])
def test_strict_parser_rejects(bad, complaint):
    with pytest.raises(ModelStringError) as error:
        parse_model_string(bad)
    assert complaint in str(error.value)


def test_list_and_describe_models():
    patterns = list_models()
    assert {"cnn<depth>-<width>", "resnet<depth>-<width>", "preactresnet<depth>", "wrn<depth>-<width>",
            "robustresnet-a1", "robustresnet-a4", "wrn-a1", "wrn-a4"} <= set(patterns)
    text = describe_models()
    assert "nopad" in text and "robustbench:<dataset>/<threat>/<name>" in text


@pytest.mark.parametrize("model_string, published", [
    ("robustresnet-a1", 19.2e6), ("robustresnet-a2", 39.0e6), ("robustresnet-a3", 75.9e6),
    ("robustresnet-a4", 147e6), ("wrn28-10", 36.5e6),
])
def test_parameter_counts_match_the_paper(model_string, published):
    assert abs(n_params(meta_model(model_string)) / published - 1) < 0.005


def test_known_parameter_counts():
    counts = {s: n_params(meta_model(s)) for s in ["resnet20-16", "preactresnet18", "wrn-a4", "cnn4-16"]}
    # open_lth ResNet-20-16 (1x1 conv + BN shortcuts), PreActResNet-18 as in RobustBench; WRN-A4 equals
    # RobustBench's Huang2022Revisiting_WRN-A4 (checked in test_models_robustbench.py)
    assert counts == {"resnet20-16": 272474, "preactresnet18": 11172170, "wrn-a4": 147291738, "cnn4-16": 7642}


@pytest.mark.parametrize("model_string", ["cnn4-16", "resnet8-8", "cnn3-8_k5_reflect_silu", "resnet8-8_circular"])
def test_digits_models_train_on_8x8_grayscale(model_string):
    torch.manual_seed(0)
    model = create_model(model_string, num_classes=10, in_chans=1)
    assert n_params(model) < 30_000
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert check_input_size(model_string, (1, 8, 8)) == (1, 8, 8)


def test_create_model_is_seeded_by_the_caller():
    torch.manual_seed(1)
    a = create_model("resnet8-8", in_chans=1)
    torch.manual_seed(1)
    b = create_model("resnet8-8", in_chans=1)
    torch.manual_seed(2)
    c = create_model("resnet8-8", in_chans=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.stem[0].weight, c.stem[0].weight)


FAMILY_EXAMPLES = ["cnn3-4", "resnet8-4", "preactresnet18", "wrn10-1", "robustresnet-a1", "wrn-a1"]


@pytest.mark.parametrize("padding", list(PADDINGS))
@pytest.mark.parametrize("head", FAMILY_EXAMPLES)
def test_padding_kernel_and_activation_reach_every_conv(head, padding):
    model = meta_model(f"{head}_k5_{padding}_silu")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    spatial = [c for c in convs if c.kernel_size != (1, 1)]
    assert spatial and all(c.kernel_size == (5, 5) for c in spatial)
    for conv in spatial:
        unpadded = padding.startswith("nopad")
        assert conv.padding_mode == ("zeros" if unpadded else padding)
        assert conv.padding == ((0, 0) if unpadded else (2, 2))
    assert all(c.padding == (0, 0) for c in convs if c.kernel_size == (1, 1))
    # the squeeze-and-excitation gate of a RobustResBlock keeps its ReLU, as in the paper's code
    relus = [name for name, m in model.named_modules() if isinstance(m, nn.ReLU) and not name.endswith("se.fc.1")]
    assert not relus
    assert any(isinstance(m, nn.SiLU) for m in model.modules())


@pytest.mark.parametrize("k", [3, 5, 7])
def test_nopadcrop_shapes_are_consistent(k):
    # resnet8: stem, one block per stage; every k x k conv shrinks by k - 1, the strided ones then halve
    def expected(side):
        side -= 3 * (k - 1)  # stem + stage 1
        for _ in range(2):  # stages 2 and 3
            side = (side - k) // 2 + 1 - (k - 1)
        return side

    model = create_model(f"resnet8-4_k{k}_nopadcrop", in_chans=1).eval()
    smallest = min_input_size(f"resnet8-4_k{k}_nopadcrop", in_chans=1)
    assert expected(smallest) == 1 and expected(smallest - 1) < 1
    for side in (smallest, smallest + 1, smallest + 7):
        features = model.blocks(model.stem(torch.randn(1, 1, side, side)))
        assert features.shape[-2:] == (expected(side), expected(side))
        assert model(torch.randn(2, 1, side, side)).shape == (2, 10)
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 1, smallest - 1, smallest - 1))


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("side", [20, 21])
def test_nopadcrop_shortcut_is_center_aligned(k, side):
    """With the conv branch silenced, a block outputs its (cropped) shortcut: for a stride-2
    block the pixels at the receptive-field centres of the unpadded conv branch, 3(k-1)/2 in."""
    torch.manual_seed(0)
    model = create_model(f"resnet8-4_k{k}_nopadcrop", in_chans=1).eval()
    identity_block, strided_block = model.blocks[0], model.blocks[1]
    with torch.no_grad():
        for block in (identity_block, strided_block):
            block.bn2.weight.zero_()
            block.bn2.bias.zero_()
        strided_block.shortcut[0].weight.copy_(torch.eye(8, 4)[:, :, None, None])
    x = torch.rand(1, 4, side, side)  # positive, so the final ReLU is the identity
    out = identity_block(x)
    crop = (k - 1)
    assert torch.equal(out, x[..., crop:side - crop, crop:side - crop])
    out = strided_block(x)
    n = out.shape[-1]
    assert n == ((side - k) // 2 + 1) - (k - 1)
    start = 3 * (k - 1) // 2
    expected = x[..., start:start + 2 * n - 1:2, start:start + 2 * n - 1:2]
    bn = strided_block.shortcut[1]
    assert torch.allclose(out[:, :4], expected / torch.sqrt(bn.running_var[:4, None, None] + bn.eps))
    assert torch.equal(out[:, 4:], torch.zeros_like(out[:, 4:]))


def test_center_crop():
    x = torch.arange(100.0).reshape(1, 1, 10, 10)
    assert torch.equal(center_crop(x, (6, 6)), x[..., 2:8, 2:8])
    assert torch.equal(center_crop(x, (4, 4), stride=2)[..., ::2, ::2], x[..., 1:9:2, 1:9:2])
    with pytest.raises(ValueError):
        center_crop(x, (11, 11))


@pytest.mark.parametrize("model_string", ["resnet8-8_circular", "resnet8-8_k5_circular", "cnn3-4_k7_circular"])
def test_circular_conv_commutes_with_roll(model_string):
    torch.manual_seed(0)
    model = create_model(model_string).double().eval()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    for shifts in [(1, 0), (0, 3), (5, -2)]:
        rolled = conv(torch.roll(x, shifts, dims=(2, 3)))
        assert torch.allclose(rolled, torch.roll(conv(x), shifts, dims=(2, 3)), atol=1e-12)
    # the whole network: translation-invariant up to its total stride (4 for resnet8, 1 for cnn)
    stride = 4 if model_string.startswith("resnet") else 1
    logits = model(x)
    assert torch.allclose(model(torch.roll(x, (stride, 2 * stride), dims=(2, 3))), logits, atol=1e-10)
    if stride > 1:
        zero_padded = create_model(model_string.replace("_circular", "")).double().eval()
        zero_padded.load_state_dict(model.state_dict())
        assert not torch.allclose(zero_padded(torch.roll(x, (stride, 0), dims=(2, 3))), zero_padded(x), atol=1e-6)


def test_padding_modes_change_the_function():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    reference = create_model("resnet8-8").eval()
    outputs = {}
    for option in ["zeros", "reflect", "replicate", "circular"]:
        model = create_model(f"resnet8-8_{option}").eval()
        model.load_state_dict(reference.state_dict())
        outputs[option] = model(x)
    for a in outputs:
        for b in outputs:
            assert a == b or not torch.allclose(outputs[a], outputs[b])


def test_input_sizes():
    assert check_input_size("resnet20-16", (3, 32, 32)) == (3, 32, 32)
    assert check_input_size("cnn4-16_nopad", (1, 9, 9)) == (1, 9, 9)
    assert check_input_size("resnet20-16_nopad", (3, 32, 32)) == (3, 32, 32)
    # the last stage's second conv needs 5 px: 5 <- 9 (stride 2, ceil) <- 17 <- 19 (stem)
    assert min_input_size("resnet20-16_nopad") == 19
    assert min_input_size("resnet20-16_k5_nopad") == 37
    assert min_input_size("resnet20-16_k7_nopad") == 55
    assert min_input_size("resnet20-16_nopadcrop") == 81
    assert min_input_size("resnet20-16_k5_nopadcrop") == 161
    for model_string, side in [("resnet20-16_k5_nopad", 37), ("resnet20-16_k7_nopad", 55), ("resnet20-16_nopadcrop", 81)]:
        with pytest.raises(ModelStringError, match=f"'{model_string}' needs inputs of at least {side}x{side}, got 32x32"):
            check_input_size(model_string, (3, 32, 32))
    with pytest.raises(ModelStringError, match="at least 9x9"):
        check_input_size("cnn4-16_nopad", (1, 8, 8))


def test_robustresnet_forward_on_cpu():
    """RobustResBlock's chained multi-scale convs, SE branch and strided pooling, really computed."""
    from filterdb.training.models.layers import LayerOptions
    from filterdb.training.models.robustresnet import RobustResBlock

    torch.manual_seed(0)
    cases = [(1, "zeros"), (2, "zeros"), (1, "crop"), (2, "crop"), (1, "none"), (2, "none"), (2, "circular")]
    for stride, padding in cases:
        block = RobustResBlock(32, 16, stride, LayerOptions(3, padding)).eval()
        out = block(torch.randn(2, 32, 17, 17))
        side = {("zeros", 1): 17, ("zeros", 2): 9, ("crop", 1): 17 - 2 * 7, ("crop", 2): 8, ("none", 1): 17,
                ("none", 2): 9, ("circular", 2): 9}
        assert out.shape == (2, 64, side[(padding, stride)], side[(padding, stride)])
        assert torch.isfinite(out).all()


# ---------------------------------------------------------------- the padding paper's no-padding ResNet

def authors_block(block, x):
    """Block.forward of tinytorchtrainer's models/open_lth/resnet.py with force_no_padding (k = 3),
    transcribed: the branch padded by (2, 1, 2, 1) in a downsampling block, (2, 2, 2, 2) otherwise."""
    out = block.act1(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    out = nn.functional.pad(out, (2, 1, 2, 1)) if block.stride == 2 else nn.functional.pad(out, (2, 2, 2, 2))
    out += block.shortcut(x)
    return torch.relu(out)


def randomize_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def test_resnet20_16_nopad_is_the_padding_papers_model():
    torch.manual_seed(0)
    model = create_model("resnet20-16_nopad")
    assert n_params(model) == 272474
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    sides = []
    hooks = [b.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1])) for b in model.blocks]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.fc.weight.detach().clone()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(model.fc.weight, before)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    for hook in hooks:
        hook.remove()
    assert sides == [30, 30, 30, 15, 15, 15, 8, 8, 8]
    assert model.stem[0].padding == (0, 0) and all(
        c.padding == (0, 0) for c in model.modules() if isinstance(c, nn.Conv2d))

    model.eval()
    with torch.no_grad():
        randomize_batchnorm(model)
        ours = authors = model.stem(x)
        for block in model.blocks:
            ours, authors = block(ours), authors_block(block, authors)
            assert torch.equal(ours, authors)
        assert torch.equal(model(x), model.fc(model.pool(authors).flatten(1)))


@pytest.mark.parametrize("model_string", ["resnet20-16_k5_nopad", "preactresnet18_nopad", "wrn16-4_nopad",
                                          "robustresnet-a1_nopad", "wrn-a1_k5_nopad"])
def test_nopad_pads_every_residual_branch_back(model_string):
    """In every residual family a block's output has its shortcut's size (input side, or half of it)."""
    model = meta_model(model_string)
    side = min_input_size(model_string)
    sides = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: sides.append((i[0].shape[-1], o.shape[-1])))
    assert model(torch.empty(2, 3, side + 4, side + 4, device="meta")).shape == (2, 10)
    for (inside, outside), block in zip(sides, model.blocks):
        assert outside == (inside if block.stride == 1 else -(-inside // 2))


def test_zero_pad_to():
    from filterdb.training.models.layers import zero_pad_to

    x = torch.ones(1, 1, 2, 2)
    padded = zero_pad_to(x, (5, 6))
    assert padded.shape[-2:] == (5, 6)
    assert torch.equal(padded[0, 0, 2:4, 2:4], x[0, 0]) and padded.sum() == 4  # 3 -> (2, 1), 4 -> (2, 2)
    with pytest.raises(ValueError, match="cannot zero-pad"):
        zero_pad_to(x, (1, 2))
