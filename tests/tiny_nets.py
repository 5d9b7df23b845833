"""Small networks with random weights that several test modules build databases from."""
import torch
from torch import nn


def three_conv_net(seed: int, dead_first: int = 0) -> nn.Module:
    """Three 3x3 convs and a 1x1 on one input channel; the first ``dead_first`` filters of the first layer are zero."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1))
    with torch.no_grad():
        model[0].weight[:dead_first] = 0
    return model
