"""Rotations and translations of whole batches, and the spatial fooling rate."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from filterdb.training.spatial import SpatialTally, SpatialTransform, grid_predictions, spatial_grid, transform_batch


@pytest.fixture
def images():
    return torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))


def test_quarter_turn_is_rot90_counterclockwise(images):
    for fill in ("zeros", "border", "reflection"):
        out = transform_batch(images, SpatialTransform(rotation=90), fill)
        torch.testing.assert_close(out, torch.rot90(images, 1, (2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(transform_batch(images, SpatialTransform(rotation=-90)), torch.rot90(images, -1, (2, 3)),
                               atol=1e-5, rtol=0)


def test_half_turn_of_a_non_square_image_flips_it():
    x = torch.rand(2, 1, 4, 8)
    torch.testing.assert_close(transform_batch(x, SpatialTransform(rotation=180)), x.flip(2, 3), atol=1e-5, rtol=0)


def test_translation_by_whole_pixels_shifts_and_fills(images):
    right = transform_batch(images, SpatialTransform(tx=1 / 6), "zeros")
    torch.testing.assert_close(right[..., 1:], images[..., :-1], atol=1e-5, rtol=0)
    assert right[..., 0].abs().max() < 1e-6
    down = transform_batch(images, SpatialTransform(ty=2 / 6), "border")
    torch.testing.assert_close(down[..., 2:, :], images[..., :-2, :], atol=1e-5, rtol=0)
    torch.testing.assert_close(down[..., 0, :], images[..., 0, :], atol=1e-5, rtol=0)  # the edge row repeated
    left = transform_batch(images, SpatialTransform(tx=-1 / 6), "reflection")
    torch.testing.assert_close(left[..., -1], images[..., -1], atol=1e-5, rtol=0)  # mirrored at the edge


def test_identity_returns_the_batch_itself(images):
    assert transform_batch(images, SpatialTransform(), "zeros") is images
    assert transform_batch(images, SpatialTransform(rotation=360), "zeros") is images


def test_unknown_fill_mode(images):
    with pytest.raises(ValueError, match="reflection"):
        transform_batch(images, SpatialTransform(rotation=10), "wrap")


def test_grid_is_rotations_times_translations_in_x_and_y():
    grid = spatial_grid([-10, 0, 10], [-0.1, 0, 0.1])
    assert len(grid) == 27 and len(set(grid)) == 27
    assert SpatialTransform(0, 0, 0) in grid and SpatialTransform(10, -0.1, 0.1) in grid


def test_tally_counts_accuracy_and_fooling_rate():
    grid = spatial_grid([0, 15], [0])
    tally = SpatialTally(grid)
    y = torch.tensor([0, 1, 2, 3])
    clean = torch.tensor([0, 1, 2, 0])  # the last one is wrong already
    preds = torch.tensor([[0, 1, 2, 0],  # identity: same as clean
                          [0, 2, 2, 3]])  # 15 degrees: breaks sample 1, fixes sample 3
    tally.add(y, clean, preds)
    s = tally.summary()
    assert [p["accuracy"] for p in s["grid"]] == [75.0, 75.0]
    assert [p["fooling_rate"] for p in s["grid"]] == [0.0, 50.0]
    assert s["worst_case_acc"] == 50.0 and s["any_fooling_rate"] == 50.0 and s["mean_fooling_rate"] == 25.0


class Constant(nn.Module):
    """Output independent of the input."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.arange(10.0))

    def forward(self, x):
        return self.bias.expand(x.shape[0], -1) + 0 * x.flatten(1).sum(1, keepdim=True)


def _fooling(model, x, grid, fill):
    tally = SpatialTally(grid)
    with torch.no_grad():
        clean = model(x).argmax(1)
    y = torch.zeros(len(x), dtype=torch.long)
    tally.add(y, clean, grid_predictions(model, x, y, grid, fill))
    return tally.summary()


def test_model_ignoring_its_input_is_never_fooled(images):
    s = _fooling(Constant(), images, spatial_grid([-30, 0, 30], [-0.2, 0, 0.2]), "zeros")
    assert s["any_fooling_rate"] == 0.0 and all(p["fooling_rate"] == 0 for p in s["grid"])


def test_rotation_by_zero_never_fools_and_others_do():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10)).eval()
    x = torch.rand(64, 3, 16, 16)
    s = _fooling(model, x, spatial_grid([0, 90], [0]), "reflection")
    assert s["grid"][0]["fooling_rate"] == 0.0
    assert s["grid"][1]["fooling_rate"] > 0
