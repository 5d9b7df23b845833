"""RobustResBlock, RobustResNet-A1..A4 and WRN-A1..A4 (Huang et al., "Revisiting Residual
Networks for Adversarial Robustness", CVPR 2023; github.com/zhichao-lu/robust-residual-network).

A RobustResBlock is a pre-activation bottleneck (expansion 4) whose middle is Res2Net-like:
the 1x1-expanded features are split into ``scales`` chunks, all but the last go through a
grouped k x k conv, each chunk adding the previous chunk's output (in stride-1 blocks), and a
squeeze-and-excitation branch on the BN'd block output is added to the residual sum.
Its quirks follow the published code so that parameter counts match the paper: the first
1x1 conv reads the block input, not the pre-activated one (``bn1`` feeds only the
shortcut), and the SE gate uses ReLU whatever the activation option.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .layers import LayerOptions, center_crop, conv1x1, zero_pad_to
from .preact import PreActBlock, PreActResNet

# compound scaling (depths D1, D2, D3 and widening factors W1, W2, W3 per stage), README of the paper's code
ROBUST_RESNETS = {
    "a1": ((14, 14, 7), (5, 7, 3)),
    "a2": ((17, 17, 8), (7, 9, 4)),
    "a3": ((22, 22, 11), (8, 11, 5)),
    "a4": ((27, 28, 13), (10, 14, 6)),
}


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(),
            nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class RobustResBlock(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, options: LayerOptions,
                 scales: int = 8, base_width: int = 10, cardinality: int = 4, se_reduction: int = 64):
        super().__init__()
        width = math.floor(planes * base_width / 160) * cardinality
        self.out_channels = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act = options.act()
        self.conv1 = nn.Conv2d(in_channels, width * scales, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width * scales)
        self.conv2 = nn.ModuleList(options.conv(width, width, stride, groups=cardinality) for _ in range(scales - 1))
        self.bn3 = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scales - 1))
        self.pool = options.avg_pool(3, stride) if stride > 1 else None
        self.conv3 = nn.Conv2d(width * scales, self.out_channels, 1, bias=False)
        self.se_bn = nn.BatchNorm2d(self.out_channels)
        self.se = SqueezeExcitation(self.out_channels, se_reduction)
        needs_projection = stride > 1 or in_channels != self.out_channels
        self.shortcut = conv1x1(in_channels, self.out_channels, stride) if needs_projection else None
        self.scales, self.stride = scales, stride
        self.options = options

    def forward(self, x):
        shortcut = x if self.shortcut is None else self.act(self.bn1(x))
        chunks = torch.chunk(self.act(self.bn2(self.conv1(x))), self.scales, 1)
        ys = []
        for i, (conv, bn) in enumerate(zip(self.conv2, self.bn3)):
            chunk = chunks[i]
            if i > 0 and self.stride == 1:  # strided blocks act as a plain bottleneck, no chaining
                chunk = self._match(chunk, ys[-1]) + self._match(ys[-1], chunk)
            ys.append(self.act(bn(conv(chunk))))
        ys.append(chunks[-1] if self.pool is None else self.pool(chunks[-1]))
        like = (max if self.options.padding == "none" else min)(ys, key=lambda y: y.shape[-1])
        out = self.conv3(torch.cat([self._match(y, like) for y in ys], 1))
        if self.options.padding == "crop":
            shortcut = center_crop(shortcut, out.shape[-2:], self.stride)
        if self.shortcut is not None:
            shortcut = self.shortcut(shortcut)
        return self.options.add_residual(out, shortcut) + self._match(self.se(self.se_bn(out)), shortcut)

    def _match(self, x, like):
        """Unpadded modes: maps of two sizes meet; "crop" crops the larger to the smaller,
        "none" zero-pads the smaller to the larger (a no-op for same sizes and padded modes)."""
        if self.options.padding == "crop" and x.shape[-1] > like.shape[-1]:
            return center_crop(x, like.shape[-2:])
        if self.options.padding == "none" and x.shape[-1] < like.shape[-1]:
            return zero_pad_to(x, like.shape[-2:])
        return x


def _stages(variant: str) -> list[tuple[int, int, int]]:
    depths, widens = ROBUST_RESNETS[variant]
    return [(base * w, d, stride) for base, w, d, stride in zip((16, 32, 64), widens, depths, (1, 2, 2))]


def robust_resnet(variant: str, num_classes: int, in_chans: int, options: LayerOptions) -> PreActResNet:
    return PreActResNet(16, _stages(variant), num_classes, in_chans, options, block=RobustResBlock)


def wrn_a(variant: str, num_classes: int, in_chans: int, options: LayerOptions) -> PreActResNet:
    return PreActResNet(16, _stages(variant), num_classes, in_chans, options, block=PreActBlock)
