"""White-box attacks on image classifiers: batched PGD and FGSM under the Linf or L2 norm.

Inputs live in [0, 1]; every adversarial example stays inside the eps ball around its
clean image and inside [0, 1]. The model is put in eval mode for the attack (batch norm
uses running statistics, dropout is off) and restored afterwards. The attacks run under
an enclosing ``torch.autocast``; losses are computed in float32 and summed over the
batch so that half-precision gradients do not underflow.

Public API, reused by evaluation code:

- ``AttackConfig`` — norm, eps, steps, step size, random start, restarts, loss (ce / cw)
- ``pgd(model, x, y, config, loss_fn=None)`` — the adversarial batch
- ``fgsm(model, x, y, eps, norm="Linf", random_start=False)`` — one-step PGD
- ``robust_accuracy(model, loader, config)`` / ``clean_accuracy(model, loader)``
- ``cw_margin_loss``, ``project``, ``parse_eps``
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from filterdb.eps import format_eps, parse_eps  # noqa: F401 - exported here too (filterdb.training)
from filterdb.errors import FilterDBError

NORMS = ("Linf", "L2")
LOSSES = ("ce", "cw")

# loss_fn(logits, y) -> per-sample losses to maximise, shape (batch,)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttackConfig:
    """The parameters of a PGD attack. ``steps=1`` without random start is FGSM.

    ``step_size=None`` takes Madry's rule 2.5 * eps / steps (eps itself for one step).
    ``restarts`` > 1 keeps, per sample, the first restart that fools the model, else the
    one with the highest loss.
    """
    norm: str = "Linf"
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"

    def __post_init__(self):
        if self.norm not in NORMS:
            raise FilterDBError(f"unknown attack norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.loss not in LOSSES:
            raise FilterDBError(f"unknown attack loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        object.__setattr__(self, "eps", parse_eps(self.eps))
        if self.steps < 1 or self.restarts < 1:
            raise FilterDBError(f"attack steps and restarts must be >= 1 (got steps={self.steps}, restarts={self.restarts})")
        if self.step_size is not None and not self.step_size > 0:
            raise FilterDBError(f"attack step size must be > 0 (got {self.step_size})")

    @property
    def alpha(self) -> float:
        """The step size in use."""
        if self.step_size is not None:
            return float(self.step_size)
        return self.eps if self.steps == 1 else 2.5 * self.eps / self.steps

    @property
    def name(self) -> str:
        """Short label for tables and checkpoints: ``pgd-10``, ``fgsm``, ``cw-20``."""
        if self.steps == 1 and not self.random_start and self.loss == "ce":
            return "fgsm"
        return f"{'cw' if self.loss == 'cw' else 'pgd'}-{self.steps}"

    def describe(self) -> str:
        return (f"{self.name} {self.norm} eps={format_eps(self.eps)} step={self.alpha:.4g}"
                f"{' rs' if self.random_start else ''}{f' x{self.restarts}' if self.restarts > 1 else ''}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["step_size"] = self.alpha
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AttackConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def with_eps(self, eps: float) -> AttackConfig:
        """The same attack at another budget; a step size given explicitly scales with eps."""
        if self.step_size is not None and self.eps > 0:
            return replace(self, eps=eps, step_size=self.step_size * eps / self.eps)
        return replace(self, eps=eps)


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Carlini-Wagner margin, per sample: max_{j != y} z_j - z_y, clipped at ``kappa``. Positive means fooled."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return (others.max(1).values - true).clamp(max=kappa)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, broadcastable against ``t``."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """The nearest perturbation inside the eps ball."""
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    factor = (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * factor


def _random_start(x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    if norm == "Linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    direction = torch.randn_like(x)
    direction = direction / _flat_norm(direction).clamp_min(1e-12)
    radius = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
    return direction * radius * eps


def _step(grad: torch.Tensor, norm: str, alpha: float) -> torch.Tensor:
    if norm == "Linf":
        return alpha * grad.sign()
    return alpha * grad / _flat_norm(grad).clamp_min(1e-12)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode for the duration of the block, then the mode the model had before."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _one_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, loss_fn: LossFn) -> torch.Tensor:
    delta = _random_start(x, cfg.norm, cfg.eps) if cfg.random_start else torch.zeros_like(x)
    delta = (x + delta).clamp(0, 1) - x
    alpha = cfg.alpha
    for _ in range(cfg.steps):
        delta.requires_grad_(True)
        loss = loss_fn(model(x + delta), y).sum()
        grad, = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = project(delta + _step(grad.float(), cfg.norm, alpha).to(delta.dtype), cfg.norm, cfg.eps)
            delta = (x + delta).clamp(0, 1) - x  # moves every coordinate toward 0: stays in the ball
    return (x + delta).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AttackConfig,
        loss_fn: LossFn | None = None) -> torch.Tensor:
    """Adversarial examples for the batch ``(x, y)`` under ``config``; ``x`` in [0, 1].

    ``loss_fn(logits, y)`` returns the per-sample loss to maximise; the default follows
    ``config.loss`` (cross-entropy or the CW margin). TRADES passes a KL divergence to the
    clean prediction here. The model's parameters get no gradients.
    """
    if loss_fn is None:
        loss_fn = cw_margin_loss if config.loss == "cw" else ce_loss
    x = x.detach()
    if config.eps == 0:
        return x.clone()
    with eval_mode(model), torch.enable_grad():
        best = _one_run(model, x, y, config, loss_fn)
        if config.restarts == 1:
            return best
        with torch.no_grad():
            logits = model(best)
            best_loss, best_fooled = loss_fn(logits, y).float(), logits.argmax(1) != y
        for _ in range(config.restarts - 1):
            candidate = _one_run(model, x, y, config, loss_fn)
            with torch.no_grad():
                logits = model(candidate)
                loss, fooled = loss_fn(logits, y).float(), logits.argmax(1) != y
                better = ~best_fooled & (fooled | (loss > best_loss))
                best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), candidate, best)
                best_loss = torch.where(better, loss, best_loss)
                best_fooled = best_fooled | fooled
        return best


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
         random_start: bool = False, step_size: float | None = None) -> torch.Tensor:
    """FGSM (one signed-gradient step of size eps); with ``random_start``, Wong et al.'s
    fast variant: uniform start in the ball and a step of 1.25 * eps."""
    if step_size is None:
        step_size = 1.25 * eps if random_start else eps
    return pgd(model, x, y, AttackConfig(norm=norm, eps=eps, steps=1, step_size=step_size, random_start=random_start))


def _batches(loader: Iterable, device: torch.device | str | None):
    for x, y in loader:
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        yield x, y


def clean_accuracy(model: nn.Module, loader: Iterable, device=None) -> float:
    """Top-1 accuracy in percent on ``(x, y)`` batches (float in [0, 1] or uint8 images)."""
    correct = total = 0
    with eval_mode(model), torch.no_grad():
        for x, y in _batches(loader, device):
            correct += (model(x).argmax(1) == y).sum().item()
            total += y.numel()
    return 100.0 * correct / max(total, 1)


def robust_accuracy(model: nn.Module, loader: Iterable, config: AttackConfig, device=None) -> tuple[float, float]:
    """(clean accuracy, robust accuracy) in percent. A sample counts as robust when it is
    classified correctly clean and under the attack."""
    correct = robust = total = 0
    with eval_mode(model):
        for x, y in _batches(loader, device):
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            x_adv = pgd(model, x, y, config)
            with torch.no_grad():
                ok_adv = ok & (model(x_adv).argmax(1) == y)
            correct += ok.sum().item()
            robust += ok_adv.sum().item()
            total += y.numel()
    return 100.0 * correct / max(total, 1), 100.0 * robust / max(total, 1)


__all__ = ["AttackConfig", "pgd", "fgsm", "project", "cw_margin_loss", "ce_loss", "parse_eps", "format_eps",
           "clean_accuracy", "robust_accuracy", "eval_mode", "NORMS", "LOSSES"]
