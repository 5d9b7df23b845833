"""open_lth-style CIFAR ResNet-D-W (He et al. 2016, section 4.2): post-activation basic blocks.

D = 6n + 2: a k x k stem conv, three stages of n blocks with widths W, 2W, 4W (strides
1, 2, 2), global average pooling and a linear classifier. A block whose shape changes gets
a 1x1 conv + BN shortcut, and conv and linear weights start Kaiming-normal, as in open_lth.

With padding "none" (``_nopad``) this is the padding paper's no-padding ResNet
(tinytorchtrainer's ``open_lth/resnet.py`` with ``force_no_padding``): every k x k conv,
the stem's included, is unpadded and each block zero-pads its residual branch back to the
shortcut's size. resnet20-16_nopad on 32x32 inputs: stem 30 px, blocks 30, 30, 30, 15, 15,
15, 8, 8, 8 px. The authors' pads are fixed for k = 3 (their k5/k7 no-padding models fail
on any input); here larger kernels pad by the same rule (``LayerOptions.add_residual``), our
extension. Their maps vanish on 32x32: resnet20-16_k5_nopad needs 37x37 inputs and
resnet20-16_k7_nopad 55x55, and training refuses smaller ones with that message
(``registry.check_input_size``).
"""
from __future__ import annotations

from torch import nn

from .layers import LayerOptions, center_crop, conv1x1


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, options: LayerOptions):
        super().__init__()
        self.conv1 = options.conv(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = options.act()
        self.conv2 = options.conv(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = options.act()
        self.stride = stride
        self.options = options
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.options.padding == "crop":
            x = center_crop(x, out.shape[-2:], self.stride)
        return self.act2(self.options.add_residual(out, self.shortcut(x)))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int, in_chans: int, options: LayerOptions):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (8, 14, 20, 32, 56, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(options.conv(in_chans, width), nn.BatchNorm2d(width), options.act())
        blocks, channels = [], width
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, stage_width, stride, options))
                channels = stage_width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))
