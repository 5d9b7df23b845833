"""Training methods: the loss of one batch for standard, FGSM, PGD-AT, TRADES, MART and CuSP training.

Each method is a function ``(model, x, y, attack, beta, attack_model) -> (loss, logits)``:
``model`` is the network in training mode (maybe wrapped by DDP or torch.compile),
``attack_model`` the bare network the attack differentiates (in eval mode), ``attack``
the effective ``AttackConfig`` of this epoch, ``logits`` what train accuracy is counted on.
Losses are computed in float32, also under autocast.

- standard: cross-entropy on clean images
- fgsm:     cross-entropy on one-step adversarial images (with random start: Wong et al. 2020)
- pgd:      cross-entropy on PGD adversarial images (Madry et al. 2018)
- trades:   CE(clean) + beta * KL(f(x) || f(x_adv)), attack maximises the KL (Zhang et al. 2019)
- mart:     boosted CE on adversarial images + beta * KL weighted by 1 - p_y(x) (Wang et al. 2020)
- cusp:     PGD-AT on randomly rotated / translated images with budgets that grow at the
            learning-rate milestones (``curriculum.py``; the trainer applies the transform)
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from filterdb.errors import FilterDBError
from filterdb.training.attacks import AttackConfig, eval_mode, pgd

METHODS = ("standard", "fgsm", "pgd", "trades", "mart", "cusp")
ROBUST_METHODS = METHODS[1:]
DEFAULT_BETA = {"trades": 6.0, "mart": 6.0}


def effective_attack(method: str, attack: AttackConfig | None) -> AttackConfig | None:
    """The attack a method trains with: None for standard; one step for FGSM (step 1.25 eps
    with random start, else eps); TRADES always starts at a random point, because its KL
    loss has a zero gradient at the clean image."""
    check_method(method)
    if method == "standard":
        return None
    attack = attack or AttackConfig()
    if method == "fgsm":
        step = attack.step_size if attack.step_size is not None and attack.steps == 1 else None
        return replace(attack, steps=1, restarts=1, step_size=step or (1.25 if attack.random_start else 1.0) * attack.eps)
    if method == "trades":
        return replace(attack, random_start=True, restarts=1, step_size=attack.alpha)
    return replace(attack, restarts=1, step_size=attack.alpha)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise FilterDBError(f"unknown training method {method!r}; choose one of {', '.join(METHODS)}")


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y)


def standard_loss(model, x, y, attack=None, beta=None, attack_model=None):
    logits = model(x)
    return _ce(logits, y), logits


def adversarial_loss(model, x, y, attack, beta=None, attack_model=None):
    """PGD-AT, FGSM and CuSP: cross-entropy on the attack's examples (the config decides which)."""
    x_adv = pgd(attack_model or model, x, y, attack)
    logits = model(x_adv)
    return _ce(logits, y), logits


def trades_loss(model, x, y, attack, beta=6.0, attack_model=None):
    net = attack_model or model
    with torch.no_grad(), eval_mode(net):
        p_clean = F.softmax(net(x).float(), dim=1)

    def kl_to_clean(logits, _y):
        return F.kl_div(F.log_softmax(logits.float(), dim=1), p_clean, reduction="none").sum(1)

    x_adv = pgd(net, x, y, attack, loss_fn=kl_to_clean)
    logits = model(x)
    logits_adv = model(x_adv)
    robust = F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits.float(), dim=1), reduction="batchmean")
    return _ce(logits, y) + beta * robust, logits


def mart_loss(model, x, y, attack, beta=6.0, attack_model=None):
    x_adv = pgd(attack_model or model, x, y, attack)
    logits = model(x).float()
    logits_adv = model(x_adv).float()
    probs_adv = F.softmax(logits_adv, dim=1)
    top2 = probs_adv.argsort(dim=1)[:, -2:]
    runner_up = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])  # most likely wrong class
    boosted_ce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - probs_adv + 1e-12), runner_up)
    probs = F.softmax(logits, dim=1)
    p_true = probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(probs_adv + 1e-12), probs, reduction="none").sum(1)
    return boosted_ce + beta * (kl * (1.0000001 - p_true)).mean(), logits_adv


LOSSES: dict[str, Callable] = {
    "standard": standard_loss,
    "fgsm": adversarial_loss,
    "pgd": adversarial_loss,
    "trades": trades_loss,
    "mart": mart_loss,
    "cusp": adversarial_loss,
}


def method_loss(method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig | None,
                beta: float | None = None, attack_model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss of one batch under ``method`` and the logits to count accuracy on."""
    check_method(method)
    if beta is None:
        beta = DEFAULT_BETA.get(method, 0.0)
    return LOSSES[method](model, x, y, attack, beta, attack_model)
