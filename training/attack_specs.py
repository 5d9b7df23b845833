"""The attacks of an evaluation as they are written: ``pgd-20``, ``cw-50``, ``autoattack``,
``autoattack:apgd-ce+square``; budgets (``Linf:8/255``), number lists, and their checks."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from fractions import Fraction

import torch
from torch import nn

from filterdb.eps import format_eps, parse_eps
from filterdb.errors import FilterDBError
from filterdb.training.attacks import NORMS, AttackConfig, pgd
from filterdb.training.autoattack import autoattack_version, run_autoattack

ATTACK_KINDS = ("pgd", "cw", "autoattack")


AUTOATTACK_PARTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


DEFAULT_STEPS = 20


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the evaluation: ``pgd-20``, ``cw-20``, ``autoattack`` (standard) or
    ``autoattack:apgd-ce+square`` (a subset)."""
    kind: str
    steps: int | None = None  # pgd, cw
    parts: tuple[str, ...] = ()  # autoattack; () is the standard version

    @property
    def name(self) -> str:
        if self.kind == "autoattack":
            return "autoattack" + (":" + "+".join(self.parts) if self.parts else "")
        return f"{self.kind}-{self.steps}"

    def config(self, norm: str, eps: float) -> AttackConfig:
        """The PGD configuration of a pgd / cw attack (Madry's step size 2.5 * eps / steps, random start)."""
        if self.steps is None:
            raise FilterDBError(f"{self.name} is not a PGD-style attack: it has no PGD configuration")
        return AttackConfig(norm=norm, eps=eps, steps=self.steps, loss="cw" if self.kind == "cw" else "ce")

    def params(self, norm: str, eps: float, num_classes: int) -> dict:
        """Every parameter that defines this attack at this budget, for the results file."""
        if self.kind != "autoattack":
            return {"kind": self.kind, **self.config(norm, eps).to_dict()}
        targets = min(9, num_classes - 1)
        return {"kind": "autoattack", "version": "custom" if self.parts else "standard",
                "attacks": list(self.parts or ("apgd-ce", "apgd-t", "fab-t", "square")), "norm": norm, "eps": eps,
                "apgd_iterations": 100, "apgd_restarts": 1, "target_classes": targets, "fab_iterations": 100,
                "square_queries": 5000, "package": "pyautoattack " + autoattack_version()}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, seed: int,
            num_classes: int, notes: set[str]) -> torch.Tensor:
        """Adversarial examples for the batch; AutoAttack's reliability warnings go into ``notes``."""
        torch.manual_seed(seed)
        if self.kind != "autoattack":
            return pgd(model, x, y, self.config(norm, eps))
        return run_autoattack(model, x, y, norm, eps, self.parts, seed=seed, num_classes=num_classes, notes=notes)


def parse_attacks(text: str) -> tuple[AttackSpec, ...]:
    """``"pgd,cw-50,autoattack:apgd-ce,square"`` -> pgd-20, cw-50, autoattack:apgd-ce+square.

    Names of AutoAttack's attacks right after ``autoattack:`` join its subset, whether
    separated by ``+`` or by ``,``.
    """
    specs: list[AttackSpec] = []
    for token in (t.strip().lower() for t in str(text).split(",")):
        if not token:
            continue
        last = specs[-1] if specs else None
        if token in AUTOATTACK_PARTS and last is not None and last.parts:
            specs[-1] = replace(last, parts=_parts(last.parts + (token,)))
        elif token in ("autoattack", "autoattack:standard", "aa"):
            specs.append(AttackSpec("autoattack"))
        elif token.startswith("autoattack:"):
            specs.append(AttackSpec("autoattack", parts=_parts(tuple(token.split(":", 1)[1].split("+")))))
        elif m := re.fullmatch(r"(pgd|cw)(?:-(\d+))?", token):
            steps = int(m.group(2) or DEFAULT_STEPS)
            if steps < 1:
                raise FilterDBError(f"attack {token!r}: steps must be >= 1")
            specs.append(AttackSpec(m.group(1), steps=steps))
        else:
            hint = f" (write autoattack:{token} for this AutoAttack attack alone)" if token in AUTOATTACK_PARTS else ""
            raise FilterDBError(f"unknown attack {token!r}{hint}; choose pgd[-STEPS], cw[-STEPS], autoattack or "
                                f"autoattack:A+B with A, B from {', '.join(AUTOATTACK_PARTS)}")
    return tuple(dict.fromkeys(specs))


def _parts(parts: tuple[str, ...]) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in parts if p.strip())
    unknown = [p for p in parts if p not in AUTOATTACK_PARTS]
    if unknown or not parts:
        raise FilterDBError(f"unknown AutoAttack attack {', '.join(unknown) or '(none given)'}; "
                            f"choose from {', '.join(AUTOATTACK_PARTS)}")
    return tuple(dict.fromkeys(parts))


def parse_budgets(norm: str, values) -> tuple[float, ...]:
    """Budgets from ``"1/255,8/255"`` or a sequence; ``""`` / ``"none"`` for none. Each must be
    > 0, and a Linf budget <= 1 (images live in [0, 1])."""
    if norm not in NORMS:
        raise FilterDBError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if isinstance(values, str):
        values = [] if values.strip().lower() in ("", "none") else [v for v in values.split(",") if v.strip()]
    budgets = tuple(parse_eps(v) for v in values)
    for eps in budgets:
        if eps <= 0:
            raise FilterDBError(f"{norm} eps {format_eps(eps)} is out of range: budgets must be > 0")
        if norm == "Linf" and eps > 1:
            raise FilterDBError(f"Linf eps {eps:g} is out of range (0, 1]: images live in [0, 1], so write "
                                f"8/255 rather than 8")
    return tuple(dict.fromkeys(budgets))


def check_budgets(budgets: list[tuple[str, float]], input_shape) -> None:
    """An L2 budget beyond the diameter of the [0, 1] image cube cannot be meant."""
    diameter = math.sqrt(math.prod(input_shape))
    for norm, eps in budgets:
        if norm == "L2" and eps > diameter:
            raise FilterDBError(f"L2 eps {eps:g} is out of range for {tuple(input_shape)} inputs: no two images "
                                f"are further apart than {diameter:.4g}")


def parse_threat(text: str | None) -> tuple[str, float] | None:
    """``"Linf:8/255"`` -> ("Linf", 0.0313...)."""
    if text is None or text == "":
        return None
    if isinstance(text, tuple):
        return text[0], parse_eps(text[1])
    norm, sep, eps = str(text).partition(":")
    norm = {"linf": "Linf", "l2": "L2"}.get(norm.strip().lower(), norm.strip())
    if not sep or norm not in NORMS:
        raise FilterDBError(f"invalid threat model {text!r}: write NORM:EPS, e.g. Linf:8/255 or L2:0.5")
    (eps_value,) = parse_budgets(norm, [eps])
    return norm, eps_value


def parse_numbers(text, what: str) -> tuple[float, ...]:
    """Comma-separated numbers or fractions (``"-3/32,0,3/32"``)."""
    if not isinstance(text, str):
        return tuple(float(v) for v in text)
    try:
        return tuple(float(Fraction(v.strip())) for v in text.split(",") if v.strip())
    except (ValueError, ZeroDivisionError):
        raise FilterDBError(f"invalid {what} {text!r}: give comma-separated numbers, e.g. -30,0,30") from None
