"""CuSP: a curriculum over spatial and adversarial budgets (Kamath et al., "Can we have it
all? On the trade-off between spatial and adversarial robustness", NeurIPS 2021).

Training starts with small budgets and grows them at the learning-rate milestones: with
milestones m_1 < ... < m_k the epochs fall into k + 1 stages, and stage s (0-based)
trains with (s + 1) / (k + 1) of the final rotation, translation and eps. The final
budgets are reached in the last stage. Samples are rotated and translated at random
within the stage's spatial budget, then attacked by PGD within its eps.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Budgets:
    rotation: float  # degrees, a sample is rotated by U(-rotation, rotation)
    translation: float  # fraction of the image side, shifted by U(-t, t) in x and in y
    eps: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CuspCurriculum:
    final: Budgets
    milestones: tuple[int, ...]  # epochs (0-based) at which the next stage starts: the LR milestones

    def stage(self, epoch: int) -> int:
        return bisect.bisect_right(sorted(self.milestones), epoch)

    def budgets(self, epoch: int) -> Budgets:
        """The budgets of ``epoch`` (0-based)."""
        fraction = (self.stage(epoch) + 1) / (len(self.milestones) + 1)
        return Budgets(self.final.rotation * fraction, self.final.translation * fraction, self.final.eps * fraction)

    def state_dict(self) -> dict:
        return {"final": self.final.to_dict(), "milestones": list(self.milestones)}

    @classmethod
    def from_state_dict(cls, state: dict) -> CuspCurriculum:
        return cls(Budgets(**state["final"]), tuple(state["milestones"]))


def random_spatial(x: torch.Tensor, rotation: float, translation: float, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image by U(-rotation, rotation) degrees and shift it by U(-t, t) of its side
    (bilinear, zeros outside). Draws come from ``generator`` on the CPU."""
    if rotation == 0 and translation == 0:
        return x
    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(rotation)
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * translation * 2  # affine_grid spans [-1, 1]
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, torch.float32), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)
