"""Spatial robustness: accuracy and fooling rate over a grid of rotations and translations.

As in Kamath et al. ("Can we have it all? On the trade-off between spatial and adversarial
robustness", NeurIPS 2021) every test image is rotated and translated by each point of a
grid; the fooling rate is the share of predictions that differ from the prediction on the
untransformed image (so a model that ignores its input has fooling rate 0, whatever its
accuracy). Optionally each transformed image is attacked as well (PGD within an eps ball
around the transformed image), which measures the combined threat.

Geometry: a positive rotation turns the content counterclockwise on screen (as
``torch.rot90`` and ``torchvision``'s ``rotate``), about the image centre; a translation
(tx, ty) is a fraction of the image width / height, positive to the right / down. Pixels
that come from outside the image are filled by the fill mode (``grid_sample``'s
padding modes): zeros, border (the nearest edge pixel) or reflection. Interpolation is
bilinear; the identity is returned unchanged.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from filterdb.training.attacks import AttackConfig, pgd

FILL_MODES = ("zeros", "border", "reflection")
INTERPOLATION = "bilinear"


@dataclass(frozen=True)
class SpatialTransform:
    rotation: float = 0.0  # degrees, counterclockwise
    tx: float = 0.0  # fraction of the width, positive to the right
    ty: float = 0.0  # fraction of the height, positive down

    @property
    def is_identity(self) -> bool:
        return self.rotation % 360 == 0 and self.tx == 0 and self.ty == 0

    def to_dict(self) -> dict:
        return asdict(self)


def spatial_grid(rotations, translations) -> list[SpatialTransform]:
    """Every rotation combined with every horizontal and every vertical translation."""
    return [SpatialTransform(float(r), float(tx), float(ty))
            for r, tx, ty in itertools.product(rotations, translations, translations)]


def transform_batch(x: torch.Tensor, transform: SpatialTransform, fill: str = "zeros") -> torch.Tensor:
    """``x`` (B, C, H, W) rotated and translated by ``transform``, in one ``grid_sample`` call."""
    if fill not in FILL_MODES:
        raise ValueError(f"unknown fill mode {fill!r}; choose one of {', '.join(FILL_MODES)}")
    if transform.is_identity:
        return x
    b, _, h, w = x.shape
    a = math.radians(transform.rotation)
    cos, sin = math.cos(a), math.sin(a)
    # output pixel p shows input pixel R^-1 (p - d); in normalised coordinates ([-1, 1] on
    # both axes) the rotation is rescaled by the aspect ratio so that it stays a rotation
    inv = torch.tensor([[cos, -sin * h / w], [sin * w / h, cos]], dtype=torch.float64)
    shift = torch.tensor([2 * transform.tx, 2 * transform.ty], dtype=torch.float64)
    theta = torch.cat([inv, -(inv @ shift)[:, None]], 1).to(x.device, torch.float32)
    grid = F.affine_grid(theta.expand(b, 2, 3), [b, x.shape[1], h, w], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode=INTERPOLATION, padding_mode=fill, align_corners=False)
    return out.clamp(0, 1).to(x.dtype)


class SpatialTally:
    """Counts over batches: per grid point the correct and the changed predictions; per
    sample whether it stays correct under every grid point and whether any changes it."""

    def __init__(self, grid: list[SpatialTransform]):
        self.grid = grid
        self.correct = torch.zeros(len(grid), dtype=torch.long)
        self.changed = torch.zeros(len(grid), dtype=torch.long)
        self.all_correct = self.any_changed = self.n = 0

    def add(self, y: torch.Tensor, clean_pred: torch.Tensor, preds: torch.Tensor) -> None:
        """``preds`` (G, B): the predictions under each grid point for the batch."""
        correct, changed = preds == y, preds != clean_pred
        self.correct += correct.sum(1).cpu()
        self.changed += changed.sum(1).cpu()
        self.all_correct += int(correct.all(0).sum())
        self.any_changed += int(changed.any(0).sum())
        self.n += y.numel()

    def summary(self) -> dict:
        """Percentages: accuracy and fooling rate per grid point, worst case over the grid
        (correct under every point), the mean fooling rate and the share changed by any point."""
        n = max(self.n, 1)
        points = [{**t.to_dict(), "accuracy": 100.0 * int(c) / n, "fooling_rate": 100.0 * int(f) / n}
                  for t, c, f in zip(self.grid, self.correct, self.changed)]
        return {"grid": points, "worst_case_acc": 100.0 * self.all_correct / n,
                "mean_acc": float(sum(p["accuracy"] for p in points) / len(points)),
                "mean_fooling_rate": float(sum(p["fooling_rate"] for p in points) / len(points)),
                "any_fooling_rate": 100.0 * self.any_changed / n}


def grid_predictions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, grid: list[SpatialTransform],
                     fill: str = "zeros", attack: AttackConfig | None = None, attack_model: nn.Module | None = None,
                     ) -> torch.Tensor:
    """(G, B) predictions of ``model`` on the batch under each grid point, each transformed
    batch attacked by PGD under ``attack`` (through ``attack_model``, e.g. a mixed-precision
    wrapper) when one is given."""
    preds = []
    for transform in grid:
        xt = transform_batch(x, transform, fill)
        if attack is not None:
            xt = pgd(attack_model or model, xt, y, attack)
        with torch.no_grad():
            preds.append(model(xt).argmax(1))
    return torch.stack(preds)


__all__ = ["FILL_MODES", "INTERPOLATION", "SpatialTransform", "SpatialTally", "spatial_grid", "transform_batch",
           "grid_predictions"]
