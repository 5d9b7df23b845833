"""Pre-activation residual networks: PreActResNet-18/34, WideResNet-D-W and the generic
stage-wise network that RobustResNets and WRN-As are built from.

``PreActResNet`` is a k x k stem conv, stages of residual blocks, then BN, activation,
global average pooling and a linear classifier, as in the CVPR 2023 RobustResNet code and
RobustBench's WideResNet / PreActResNet-18.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

from .layers import LayerOptions, center_crop, conv1x1

BlockFactory = Callable[[int, int, int, LayerOptions], nn.Module]  # (in_channels, width, stride, options)


class PreActBlock(nn.Module):
    """BN-act-conv-BN-act-conv; a 1x1 shortcut on the activated input where the shape changes."""

    def __init__(self, in_channels: int, width: int, stride: int, options: LayerOptions):
        super().__init__()
        self.out_channels = width
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = options.act()
        self.conv1 = options.conv(in_channels, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = options.act()
        self.conv2 = options.conv(width, width)
        self.shortcut = conv1x1(in_channels, width, stride) if stride != 1 or in_channels != width else None
        self.stride = stride
        self.options = options

    def forward(self, x):
        out = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else out
        out = self.conv2(self.act2(self.bn2(self.conv1(out))))
        if self.options.padding == "crop":
            shortcut = center_crop(shortcut, out.shape[-2:], self.stride)
        if self.shortcut is not None:
            shortcut = self.shortcut(shortcut)
        return self.options.add_residual(out, shortcut)


class PreActResNet(nn.Module):
    def __init__(self, stem_width: int, stages: Sequence[tuple[int, int, int]], num_classes: int, in_chans: int,
                 options: LayerOptions, block: BlockFactory = PreActBlock):
        """``stages``: (width, number of blocks, stride of the first block) per stage."""
        super().__init__()
        self.stem = options.conv(in_chans, stem_width)
        blocks, channels = [], stem_width
        for width, depth, stride in stages:
            for i in range(depth):
                blocks.append(block(channels, width, stride if i == 0 else 1, options))
                channels = int(getattr(blocks[-1], "out_channels"))  # noqa: B009 (every block records its output width; Module's type does not say so)
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels)
        self.act = options.act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.bn(self.blocks(self.stem(x))))).flatten(1))


def _init_weights(model: nn.Module) -> None:
    """He init of convs (fan-out), unit BN, zero linear bias: the WideResNet / RobustResNet init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


PREACT_RESNET_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def preact_resnet(depth: int, num_classes: int, in_chans: int, options: LayerOptions) -> PreActResNet:
    stages = [(width, n, stride) for width, n, stride in zip((64, 128, 256, 512), PREACT_RESNET_DEPTHS[depth], (1, 2, 2, 2))]
    return PreActResNet(64, stages, num_classes, in_chans, options)


def wide_resnet(depth: int, widen: int, num_classes: int, in_chans: int, options: LayerOptions) -> PreActResNet:
    """WRN-D-W: (D - 4) / 6 blocks per stage, widths 16W, 32W, 64W."""
    n = (depth - 4) // 6
    return PreActResNet(16, [(16 * widen, n, 1), (32 * widen, n, 2), (64 * widen, n, 2)], num_classes, in_chans, options)
