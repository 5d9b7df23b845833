"""Perturbation maps and the border-vs-interior ratio of the padding paper."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from filterdb.training.perturbation import PerturbationMap, border_mask, border_ratio, border_stats


def test_border_mask_is_a_frame_of_the_given_width():
    mask = border_mask(8, 8, 1)
    assert mask.sum() == 8 * 8 - 6 * 6
    assert mask[0].all() and mask[:, -1].all() and not mask[1:-1, 1:-1].any()
    assert border_mask(8, 8, 2).sum() == 64 - 16
    assert border_mask(5, 9, 2).sum() == 45 - 1 * 5
    with pytest.raises(ValueError):
        border_mask(8, 8, 0)


def test_perturbation_only_on_the_border_has_infinite_ratio():
    pmap = border_mask(32, 32, 1).astype(np.float32) * 0.03
    assert border_ratio(pmap, 1) == math.inf
    # a width-2 frame takes in the untouched ring inside: a smaller border mean, the interior still untouched
    stats = border_stats(pmap, 2)
    assert stats["ratio"] == math.inf and stats["border_mean"] == pytest.approx(0.03 * 124 / 240)


def test_uniform_perturbation_has_ratio_one_and_a_centred_one_less():
    assert border_ratio(np.full((32, 32), 0.02), 1) == pytest.approx(1.0)
    assert border_ratio(np.full((32, 32), 0.02), 4) == pytest.approx(1.0)
    centre = np.zeros((16, 16))
    centre[6:10, 6:10] = 1.0
    assert border_ratio(centre, 2) == 0.0


def test_border_heavy_perturbation_ratio_is_the_ratio_of_means():
    pmap = np.full((8, 8), 1.0)
    pmap[border_mask(8, 8, 1)] = 3.0
    assert border_ratio(pmap, 1) == pytest.approx(3.0)


def test_undefined_ratios_are_nan():
    assert math.isnan(border_ratio(np.zeros((8, 8)), 1))  # nothing perturbed
    assert math.isnan(border_ratio(np.ones((8, 8)), 4))  # the frame covers the whole image
    assert math.isnan(border_ratio(np.full((8, 8), np.nan), 1))


def test_map_averages_channels_and_selected_samples_only():
    x = torch.zeros(3, 2, 4, 4)
    adv = x.clone()
    adv[0, 0] = 0.4  # sample 0: channel 0 perturbed by 0.4 -> channel mean 0.2
    adv[1] = 0.1  # sample 1: 0.1 everywhere
    adv[2] = 0.9  # sample 2: not selected
    pmap = PerturbationMap(4, 4)
    pmap.add(x, adv, torch.tensor([True, True, False]))
    pmap.add(x, adv, torch.tensor([False, False, False]))
    assert pmap.count == 2
    np.testing.assert_allclose(pmap.mean(), np.full((4, 4), 0.15))
    summary = pmap.summary((1, 2))
    assert summary["n_samples"] == 2 and summary["mean"] == pytest.approx(0.15)
    assert [b["width"] for b in summary["border"]] == [1, 2]
    assert summary["border"][0]["ratio"] == pytest.approx(1.0) and math.isnan(summary["border"][1]["ratio"])


def test_empty_map_is_nan():
    pmap = PerturbationMap(4, 6)
    assert pmap.mean().shape == (4, 6) and np.isnan(pmap.mean()).all()
    assert math.isnan(pmap.summary((1,))["border"][0]["ratio"])
