"""The knobs every native architecture shares: kernel size, padding mode and activation.

``LayerOptions.conv`` builds each spatial (k x k) convolution, so a padding mode or kernel
size chosen in a model string reaches every such conv of the network. 1x1 convolutions
(shortcuts, bottlenecks) need no padding and stay as they are.

Two modes leave the convolutions unpadded, so that every k x k conv shrinks its input by k - 1;
they differ in how a residual block adds branches of different sizes:

- ``"none"`` (model option ``nopad``) is the padding paper's model (Gavrikov & Keuper, the
  open_lth ResNet of tinytorchtrainer, ``force_no_padding``): the residual branch's output is
  zero-padded back to the shortcut's size, the larger half of the difference before
  (``zero_pad_to``). For k = 3 this is the authors' ``F.pad(out, (2, 2, 2, 2))`` in a
  same-size block and ``F.pad(out, (2, 1, 2, 1))`` in a strided one; for larger kernels, where
  the authors' fixed pads do not fit and their code fails, the same rule is our extension.
- ``"crop"`` (model option ``nopadcrop``) injects no zeros anywhere: the shortcut is cropped
  to the centre of the input with ``center_crop`` before it is added to the conv branch, so
  the maps shrink through the whole network and the model needs larger inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

PADDING_MODES = ("zeros", "reflect", "replicate", "circular", "none", "crop")
UNPADDED = ("none", "crop")
TorchPaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
TORCH_PADDING_MODES: dict[str, TorchPaddingMode] = {"zeros": "zeros", "reflect": "reflect", "replicate": "replicate",
                                                    "circular": "circular"}  # the padded modes, as nn.Conv2d takes them

ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leakyrelu": nn.LeakyReLU,
    "mish": nn.Mish,
}

_PADS = {"reflect": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d, "circular": nn.CircularPad2d}


@dataclass(frozen=True)
class LayerOptions:
    kernel_size: int = 3
    padding: str = "zeros"
    activation: str = "relu"

    def __post_init__(self):
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel size must be a positive odd number, got {self.kernel_size}")
        if self.padding not in PADDING_MODES:
            raise ValueError(f"unknown padding mode {self.padding!r}; valid: {', '.join(PADDING_MODES)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")

    @property
    def pads(self) -> bool:
        return self.padding not in UNPADDED

    def add_residual(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """``branch + shortcut``; in mode "none" the branch first zero-padded to the shortcut's size.

        (Mode "crop" crops the shortcut before its 1x1 conv, see ``center_crop``.)
        """
        if self.padding == "none":
            branch = zero_pad_to(branch, shortcut.shape[-2:])
        return branch + shortcut

    def conv(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
        """A k x k convolution; 'same' padding (k // 2) in the chosen mode, or none at all."""
        k = self.kernel_size
        return nn.Conv2d(
            in_channels, out_channels, k, stride=stride, groups=groups, bias=bias,
            padding=k // 2 if self.pads else 0,
            padding_mode=TORCH_PADDING_MODES[self.padding] if self.pads else "zeros",
        )

    def avg_pool(self, kernel_size: int, stride: int) -> nn.Module:
        """Average pooling padded like the convs ("zeros" counts the zeros, as nn.AvgPool2d does)."""
        if self.padding == "zeros":
            return nn.AvgPool2d(kernel_size, stride, padding=kernel_size // 2)
        if not self.pads:
            return nn.AvgPool2d(kernel_size, stride)
        return nn.Sequential(_PADS[self.padding](kernel_size // 2), nn.AvgPool2d(kernel_size, stride))

    def act(self) -> nn.Module:
        return ACTIVATIONS[self.activation]()


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def center_crop(x: torch.Tensor, size: tuple[int, int], stride: int = 1) -> torch.Tensor:
    """Crop x (N, C, H, W) around its centre so that a stride-``stride`` 1x1 op gives ``size``.

    With stride 1 this is a plain centre crop to ``size``. With stride s it keeps the
    s * (n - 1) + 1 central rows (and columns), whose every s-th pixel lines up with the
    centres of the receptive fields of an unpadded strided conv branch.
    """
    h, w = (stride * (n - 1) + 1 for n in size)
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop a {tuple(x.shape[-2:])} map to {(h, w)}")
    return x[..., top:top + h, left:left + w]


def zero_pad_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad x (N, C, H, W) to ``size``, the larger half of each difference before (top, left).

    A difference of 4 gives (2, 2), of 3 gives (2, 1): the pads of the padding paper's code.
    """
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if dh < 0 or dw < 0:
        raise ValueError(f"cannot zero-pad a {tuple(x.shape[-2:])} map to {tuple(size)}")
    return F.pad(x, (dw - dw // 2, dw // 2, dh - dh // 2, dh // 2))
