"""A plain CNN small enough to train in seconds on the 8x8 scikit-learn digits.

cnn-D-W: D k x k conv layers of width W (conv, BN, activation; stride 1), global average
pooling and a linear classifier.
"""
from __future__ import annotations

from torch import nn

from .layers import LayerOptions


class PlainCNN(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int, in_chans: int, options: LayerOptions):
        super().__init__()
        if depth < 1:
            raise ValueError(f"a CNN needs at least one conv layer, got depth {depth}")
        layers, channels = [], in_chans
        for _ in range(depth):
            layers += [options.conv(channels, width), nn.BatchNorm2d(width), options.act()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))
