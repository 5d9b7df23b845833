"""Attacks: the eps ball and [0, 1] hold, eval mode during the attack, restarts, autocast, eps parsing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from filterdb.errors import FilterDBError
from filterdb.training.attacks import (
    AttackConfig,
    clean_accuracy,
    cw_margin_loss,
    fgsm,
    format_eps,
    parse_eps,
    pgd,
    project,
    robust_accuracy,
)


class ModeRecorder(nn.Module):
    """A small conv net with batch norm and dropout that records the mode of every forward."""

    def __init__(self, in_chans=1, classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, classes))
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.body(x)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    x[:, :, :2] = 0.0  # pixels at the edges of [0, 1], where clamping matters
    x[:, :, -2:] = 1.0
    y = torch.randint(0, 10, (16,))
    return x, y


def _check_ball(x, x_adv, norm, eps):
    delta = (x_adv - x).flatten(1)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    if norm == "Linf":
        assert delta.abs().max().item() <= eps + 1e-6
    else:
        assert delta.norm(dim=1).max().item() <= eps + 1e-5


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("Linf", 0.3), ("L2", 0.5), ("L2", 2.0)])
@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_stays_in_eps_ball_and_unit_box(batch, norm, eps, loss):
    x, y = batch
    model = ModeRecorder()
    cfg = AttackConfig(norm=norm, eps=eps, steps=7, step_size=eps / 2, random_start=True, restarts=2, loss=loss)
    x_adv = pgd(model, x, y, cfg)
    _check_ball(x, x_adv, norm, eps)
    assert (x_adv - x).abs().max() > eps / 10  # it did move


def test_pgd_increases_the_loss_and_leaves_the_model_alone(batch):
    x, y = batch
    model = ModeRecorder().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.eval()
        clean_loss = F.cross_entropy(model(x), y).item()
        model.train()
    model.modes.clear()
    x_adv = pgd(model, x, y, AttackConfig(norm="Linf", eps=0.1, steps=10))
    assert model.modes and not any(model.modes)  # every attack forward in eval mode
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN running stats untouched
    with torch.no_grad():
        model.eval()
        assert F.cross_entropy(model(x_adv), y).item() > clean_loss + 0.01


def test_fgsm_is_one_signed_step(batch):
    x, y = batch
    x = x.clamp(0.2, 0.8)  # away from the box, so that no coordinate is clamped
    model = ModeRecorder().eval()
    x_adv = fgsm(model, x, y, eps=0.05)
    delta = (x_adv - x).abs()
    assert torch.allclose(delta[delta > 0], torch.tensor(0.05), atol=1e-6)
    assert AttackConfig(eps=0.05, steps=1, random_start=False).name == "fgsm"
    _check_ball(x, fgsm(model, x, y, eps=0.05, random_start=True), "Linf", 0.05)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_attack_under_autocast(batch, norm):
    x, y = batch
    model = ModeRecorder()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(model, x, y, AttackConfig(norm=norm, eps=0.25, steps=3))
    assert x_adv.dtype == torch.float32
    _check_ball(x, x_adv, norm, 0.25)


def test_restarts_never_help_the_model(batch):
    x, y = batch
    model = ModeRecorder().eval()
    loader = [(x, y)]
    torch.manual_seed(1)
    clean1, robust1 = robust_accuracy(model, loader, AttackConfig(norm="Linf", eps=0.02, steps=2, restarts=1))
    torch.manual_seed(1)  # the first restart repeats the single run
    clean3, robust3 = robust_accuracy(model, loader, AttackConfig(norm="Linf", eps=0.02, steps=2, restarts=4))
    assert clean1 == clean3 == clean_accuracy(model, loader)
    assert robust3 <= robust1 <= clean1


def test_cw_margin_loss():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    y = torch.tensor([0, 1])
    assert cw_margin_loss(logits, y).tolist() == [-2.0, 3.0]


def test_project_l2_and_linf():
    d = torch.tensor([[[[3.0, 4.0]]]])
    assert torch.allclose(project(d, "L2", 1.0), d / 5)
    assert torch.equal(project(d, "Linf", 1.0), torch.ones_like(d))
    assert torch.equal(project(d * 0.1, "L2", 1.0), d * 0.1)  # inside the ball: unchanged


def test_parse_eps():
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps("0.5") == 0.5 and parse_eps(1) == 1.0
    assert format_eps(8 / 255) == "8/255" and format_eps(0.5) == "0.5"
    assert AttackConfig(eps="4/255").eps == pytest.approx(4 / 255)
    for bad in ("eight", "1/0", "-0.1", "nan"):
        with pytest.raises(FilterDBError):
            parse_eps(bad)


def test_attack_config_checks_and_defaults():
    cfg = AttackConfig(norm="L2", eps=0.5, steps=10)
    assert cfg.alpha == pytest.approx(0.125)  # Madry: 2.5 * eps / steps
    assert cfg.name == "pgd-10" and AttackConfig(loss="cw", steps=20).name == "cw-20"
    assert AttackConfig.from_dict(cfg.to_dict()).alpha == cfg.alpha
    for bad in (dict(norm="L1"), dict(steps=0), dict(loss="dlr"), dict(step_size=0)):
        with pytest.raises(FilterDBError):
            AttackConfig(**bad)
