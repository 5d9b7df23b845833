"""What an evaluation measures (``EvaluationConfig``) and its defaults: attacks, budgets, border
widths, the spatial grid, mixed precision, the device."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from filterdb.eps import format_eps
from filterdb.errors import FilterDBError
from filterdb.training.attack_specs import AttackSpec, parse_attacks, parse_budgets, parse_numbers, parse_threat
from filterdb.training.precision import AMP_MODES
from filterdb.training.spatial import FILL_MODES

SPATIAL_ATTACK_STEPS = 10


DEFAULT_ATTACKS = "pgd,cw,autoattack"  # on a GPU


CPU_DEFAULT_ATTACKS = "pgd"  # AutoAttack on a CPU takes tens of minutes even for a tiny model: only when asked


DEFAULT_LINF = (1 / 255, 8 / 255)


DEFAULT_L2 = (0.1, 0.5)


DEFAULT_BORDER_WIDTHS = (1, 2, 4)


DEFAULT_ROTATIONS = (-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0)


DEFAULT_TRANSLATIONS = (-0.1, 0.0, 0.1)




@dataclass
class EvaluationConfig:
    """What to measure. Strings are accepted where the CLI gives them (``attacks="pgd,cw"``,
    ``linf="1/255,8/255"``, ``rotations="-30,0,30"``) and parsed and checked here."""
    attacks: tuple[AttackSpec, ...] | str | None = None  # None: default_attacks(device)
    linf: tuple[float, ...] | str = DEFAULT_LINF
    l2: tuple[float, ...] | str = DEFAULT_L2
    n_samples: int = 1000
    batch_size: int = 256
    seed: int = 0
    border_widths: tuple[int, ...] | str = DEFAULT_BORDER_WIDTHS
    spatial: bool = True
    rotations: tuple[float, ...] | str = DEFAULT_ROTATIONS  # degrees
    translations: tuple[float, ...] | str = DEFAULT_TRANSLATIONS  # fractions of the image side
    fill: str = "zeros"
    spatial_attack: tuple[str, float] | str | None = None  # PGD-10 on every transformed image, e.g. "Linf:8/255"
    headline: tuple[str, float] | str | None = None  # the budget behind robust_acc in the model table
    amp: str = "none"
    channels_last: bool = False
    device: str | None = None
    data_dir: str | None = None

    def __post_init__(self):
        if self.attacks is None:
            self.attacks = default_attacks(self.device)
        if isinstance(self.attacks, str):
            self.attacks = parse_attacks(self.attacks)
        self.attacks = tuple(a if isinstance(a, AttackSpec) else parse_attacks(a)[0] for a in self.attacks)
        self.linf, self.l2 = parse_budgets("Linf", self.linf), parse_budgets("L2", self.l2)
        widths = parse_numbers(self.border_widths, "border widths")
        if any(w < 1 or w != int(w) for w in widths):
            raise FilterDBError(f"border widths must be whole numbers >= 1, got {self.border_widths!r}")
        self.border_widths = tuple(int(w) for w in widths)
        self.rotations = parse_numbers(self.rotations, "rotations")
        self.translations = parse_numbers(self.translations, "translations")
        if self.spatial and not (self.rotations and self.translations):
            raise FilterDBError("spatial evaluation needs at least one rotation and one translation (0 for none)")
        if self.fill not in FILL_MODES:
            raise FilterDBError(f"unknown fill mode {self.fill!r}; choose one of {', '.join(FILL_MODES)}")
        self.spatial_attack = parse_threat(self.spatial_attack)
        self.headline = parse_threat(self.headline)
        if self.amp not in AMP_MODES:
            raise FilterDBError(f"unknown amp mode {self.amp!r}; choose one of {', '.join(AMP_MODES)}")
        if self.n_samples < 1 or self.batch_size < 1:
            raise FilterDBError(f"n_samples and batch_size must be >= 1 (got {self.n_samples}, {self.batch_size})")
        if not self.attacks and not self.spatial:
            raise FilterDBError("nothing to evaluate: give at least one attack or enable the spatial evaluation")
        if self.headline is not None:
            norm, eps = self.headline
            if not self.attacks:
                raise FilterDBError(f"headline {norm}:{eps:g} needs at least one attack")
            if not any(n == norm and math.isclose(e, eps, rel_tol=1e-6) for n, e in self.budgets):
                evaluated = ", ".join(f"{n}:{format_eps(e)}" for n, e in self.budgets) or "none"
                raise FilterDBError(f"headline {norm}:{eps:g} is not among the evaluated budgets "
                                    f"({evaluated}); add it with --{norm.lower()}")

    @property
    def budgets(self) -> list[tuple[str, float]]:
        """(norm, eps) pairs, Linf first."""
        return [("Linf", float(e)) for e in self.linf] + [("L2", float(e)) for e in self.l2]

    @property
    def attack_specs(self) -> tuple[AttackSpec, ...]:
        """The attacks, parsed (``__post_init__`` turns every accepted form into AttackSpecs)."""
        assert isinstance(self.attacks, tuple)
        return self.attacks

    def to_dict(self) -> dict:
        return {"attacks": [a.name for a in self.attack_specs], "linf": list(self.linf), "l2": list(self.l2),
                "n_samples": self.n_samples, "batch_size": self.batch_size, "seed": self.seed,
                "border_widths": list(self.border_widths), "spatial": self.spatial, "rotations": list(self.rotations),
                "translations": list(self.translations), "fill": self.fill,
                "spatial_attack": list(self.spatial_attack) if self.spatial_attack else None,
                "headline": list(self.headline) if self.headline else None, "amp": self.amp,
                "channels_last": self.channels_last, "device": self.device, "data_dir": self.data_dir}


def default_attacks(device: str | None) -> str:
    """PGD, CW and AutoAttack on a GPU; PGD alone on a CPU (``device`` None: cuda if available)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return DEFAULT_ATTACKS if str(device).startswith("cuda") else CPU_DEFAULT_ATTACKS


def with_own_budget(config: EvaluationConfig, threat: tuple[str, float] | None) -> EvaluationConfig:
    """``config`` with the checkpoint's own threat model as headline, its budget added to the
    evaluated ones when missing; unchanged when ``--headline`` was given or there is no threat model."""
    if config.headline is not None or threat is None or not config.attacks:
        return config
    norm, eps = threat
    if not any(n == norm and math.isclose(e, eps, rel_tol=1e-6) for n, e in config.budgets):
        added = (*(e for n, e in config.budgets if n == norm), eps)
        config = replace(config, linf=added) if norm == "Linf" else replace(config, l2=added)
    return replace(config, headline=(norm, eps))


def own_threat(ckpt) -> tuple[str, float] | None:
    """The threat model a checkpoint was measured at by its training run (a pair shares it), else
    the one it was trained against; None for neither."""
    metrics, attack = ckpt.metrics, ckpt.attack or {}
    if metrics.get("threat_model") and metrics.get("eps"):
        return metrics["threat_model"], float(metrics["eps"])
    if attack.get("norm") and attack.get("eps"):
        return attack["norm"], float(attack["eps"])
    return None


def default_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
