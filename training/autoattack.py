"""AutoAttack (pyautoattack) in an evaluation: its adversarial examples for a batch, its warnings as notes."""
from __future__ import annotations

import logging

import torch
from torch import nn

from filterdb.training.attacks import eval_mode


def autoattack_version() -> str:
    import pyautoattack
    return str(getattr(pyautoattack, "__version__", "unknown"))


class _Collect(logging.Handler):
    def __init__(self, notes: set[str]):
        super().__init__(logging.WARNING)
        self.notes = notes

    def emit(self, record):
        self.notes.add(record.getMessage())


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float,
                   parts: tuple[str, ...] = (), seed: int = 0, num_classes: int = 10,
                   notes: set[str] | None = None) -> torch.Tensor:
    """AutoAttack's adversarial examples for the batch: the standard version, or the
    attacks in ``parts`` with the standard version's parameters. Its warnings (e.g.
    "zero gradients") are added to ``notes`` instead of being printed."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, norm=norm, eps=eps, seed=seed, version="standard", device=x.device)
    if parts:
        aa.attacks_to_run, aa.version = list(parts), "custom"
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, num_classes - 1)
    handler = _Collect(notes if notes is not None else set())
    aa.logger.addHandler(handler)
    try:
        with eval_mode(model):
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
    finally:
        aa.logger.removeHandler(handler)
    return x_adv.detach()


AUTOATTACK_GRADIENTS = 100 + 9 * 100 + 9 * 100


AUTOATTACK_QUERIES = 5000
