"""Where adversarial perturbations sit in the image: per-pixel mean magnitude and the ratio of
the border frame to the interior.

The padding paper (Gavrikov et al., "On the Interplay of Convolutional Padding and
Adversarial Robustness", ICCV-W 2023) observes that attacks concentrate their perturbation
at the image borders, where padding feeds the convolutions. Its measure, as here:

- the perturbation map: per pixel, |x_adv - x_clean| averaged over channels and over the
  samples that were classified correctly and that the attack fooled (an (H, W) array);
- the border ratio for a frame of width b: the map's mean over the pixels less than b
  pixels from an edge, divided by its mean over the remaining interior. 1 means no
  preference; larger means the perturbation sits at the border. inf when the interior is
  untouched and the border is not; NaN when nothing was perturbed or the frame leaves no
  interior (2b >= the image side).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from filterdb.evaluation_files import ratio


def border_mask(height: int, width: int, frame: int) -> np.ndarray:
    """Boolean (height, width) mask of the pixels less than ``frame`` pixels from an edge."""
    if frame < 1:
        raise ValueError(f"border width must be >= 1, got {frame}")
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    return (rows < frame) | (rows >= height - frame) | (cols < frame) | (cols >= width - frame)


def border_stats(pmap: np.ndarray, frame: int) -> dict:
    """``{"width", "border_mean", "interior_mean", "ratio"}`` of a perturbation map for a frame of width ``frame``."""
    pmap = np.asarray(pmap, dtype=np.float64)
    height, width = pmap.shape
    mask = border_mask(height, width, frame)
    border = float(pmap[mask].mean())
    interior = float(pmap[~mask].mean()) if (~mask).any() else math.nan
    return {"width": int(frame), "border_mean": border, "interior_mean": interior, "ratio": ratio(border, interior)}


def border_ratio(pmap: np.ndarray, frame: int = 1) -> float:
    """Mean of the border frame of width ``frame`` over the mean of the interior."""
    return border_stats(pmap, frame)["ratio"]


class PerturbationMap:
    """Running per-pixel sum of |x_adv - x| (mean over channels) over chosen samples of many batches."""

    def __init__(self, height: int, width: int):
        self.total = torch.zeros(height, width, dtype=torch.float64)
        self.count = 0

    def add(self, x: torch.Tensor, x_adv: torch.Tensor, mask: torch.Tensor) -> None:
        """Add the samples of the (B, C, H, W) batch that ``mask`` (B,) selects."""
        n = int(mask.sum())
        if n == 0:
            return
        delta = (x_adv[mask].float() - x[mask].float()).abs().mean(1).sum(0)
        self.total += delta.double().cpu()
        self.count += n

    def mean(self) -> np.ndarray:
        """The (H, W) map; all NaN when no sample was added."""
        if self.count == 0:
            return np.full(tuple(self.total.shape), np.nan)
        return (self.total / self.count).numpy()

    def summary(self, frames: tuple[int, ...]) -> dict:
        """Sample count, overall mean and the border statistics of each frame width."""
        pmap = self.mean()
        return {"n_samples": self.count, "mean": float(pmap.mean()) if self.count else math.nan,
                "border": [border_stats(pmap, b) for b in frames]}


__all__ = ["PerturbationMap", "border_mask", "border_stats", "border_ratio", "ratio"]
