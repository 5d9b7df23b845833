"""Robustness evaluation of a trained model, stored beside its checkpoint.

What it measures on the first ``n_samples`` images of the test split (the RobustBench
convention), with accuracies and rates in percent:

- clean accuracy;
- robust accuracy under each attack at each budget: PGD and CW (PGD on the CW margin loss,
  both from ``filterdb.training.attacks``) and AutoAttack (pyautoattack; the standard
  version or a subset of its attacks, each with the standard version's parameters), at
  Linf {1/255, 8/255} and L2 {0.1, 0.5} by default. A sample is robust when it is
  classified correctly clean and under the attack. Per budget also the worst case over
  all attacks (robust only if it survives every one of them);
- the fooling rate of each attack: the share of predictions that change against the clean
  prediction;
- the perturbation map of each attack and budget with its border ratios
  (``filterdb.training.perturbation``);
- spatial robustness over a grid of rotations and translations, optionally combined with
  PGD (``filterdb.training.spatial``).

Every attack's random draws are seeded from (seed, attack, budget, batch index), so a
result does not depend on which other attacks ran. With ``amp`` the attacks search under
``torch.autocast``; every prediction that is counted is made in float32, on an example inside
the eps ball and inside [0, 1] (an attack's example that strays beyond float rounding is
projected back, and the attack's notes say so).

Files beside the checkpoint ``run/best.pt``:

    run/best.pt.eval.json   the results (see ``RESULTS_FORMAT``), strict JSON: non-finite
                            numbers are null (a border ratio is border_mean / interior_mean)
    run/best.pt.eval.h5     the perturbation maps: float16 (H, W) datasets /maps/0, /maps/1, ...
                            with attributes attack, norm, eps, eps_label, n_samples

Reader API (for figures and the database): ``load_evaluation``, ``evaluation_frame``,
``load_perturbation_maps``, ``evaluation_record``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import sys
import time
import warnings
import zlib
from collections.abc import Sized
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from filterdb.atomic import atomic_path
from filterdb.errors import FilterDBError
from filterdb.training.attacks import NORMS, AttackConfig, eval_mode, format_eps, parse_eps, pgd, project
from filterdb.training.data import to_float
from filterdb.training.perturbation import PerturbationMap, ratio
from filterdb.training.spatial import FILL_MODES, INTERPOLATION, SpatialTally, grid_predictions, spatial_grid

RESULTS_FORMAT = "filterdb-evaluation"
MAPS_FORMAT = "filterdb-perturbation-maps"
FORMAT_VERSION = 1

ATTACK_KINDS = ("pgd", "cw", "autoattack")
AUTOATTACK_PARTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
DEFAULT_STEPS = 20
SPATIAL_ATTACK_STEPS = 10
DEFAULT_ATTACKS = "pgd,cw,autoattack"  # on a GPU
CPU_DEFAULT_ATTACKS = "pgd"  # AutoAttack on a CPU takes tens of minutes even for a tiny model: only when asked
DEFAULT_LINF = (1 / 255, 8 / 255)
DEFAULT_L2 = (0.1, 0.5)
DEFAULT_BORDER_WIDTHS = (1, 2, 4)
DEFAULT_ROTATIONS = (-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0)
DEFAULT_TRANSLATIONS = (-0.1, 0.0, 0.1)
AMP_MODES = ("none", "bf16", "fp16")


# -- what to run ------------------------------------------------------------------------------

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
        return AttackConfig(norm=norm, eps=eps, steps=self.steps, loss="cw" if self.kind == "cw" else "ce")

    def params(self, norm: str, eps: float, num_classes: int) -> dict:
        """Every parameter that defines this attack at this budget, for the results file."""
        if self.kind != "autoattack":
            return {"kind": self.kind, **self.config(norm, eps).to_dict()}
        targets = min(9, num_classes - 1)
        return {"kind": "autoattack", "version": "custom" if self.parts else "standard",
                "attacks": list(self.parts or ("apgd-ce", "apgd-t", "fab-t", "square")), "norm": norm, "eps": eps,
                "apgd_iterations": 100, "apgd_restarts": 1, "target_classes": targets, "fab_iterations": 100,
                "square_queries": 5000, "package": "pyautoattack " + _autoattack_version()}

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


# -- AutoAttack -------------------------------------------------------------------------------

def _autoattack_version() -> str:
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


# -- running ----------------------------------------------------------------------------------

class _Autocast(nn.Module):
    """The model under ``torch.autocast``, returning float32 logits: what the attacks search with."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device_type: str):
        super().__init__()
        self.model, self.dtype, self.device_type = model, dtype, device_type

    def forward(self, x):
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            return self.model(x).float()


def _seed(seed: int, *parts) -> int:
    return zlib.crc32(":".join(map(str, (seed, *parts))).encode()) & 0x7FFFFFFF


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _into_ball(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float, notes: set[str]) -> torch.Tensor:
    """``x_adv`` inside the eps ball around ``x`` and inside [0, 1], whatever the attack returned:
    only such examples are counted. Non-finite examples are replaced by the clean image. An
    excess beyond float rounding is projected away and noted."""
    x_adv = x_adv.detach().to(x.dtype)
    finite = torch.isfinite(x_adv)
    if not bool(finite.all()):
        notes.add("the attack returned non-finite examples; those samples count as not fooled")
        x_adv = torch.where(finite.flatten(1).all(1).view(-1, *([1] * (x.dim() - 1))), x_adv, x)
    excess = _norm_of(x_adv - x, norm) - eps
    out_of_range = bool((x_adv < 0).any() or (x_adv > 1).any())
    if excess > 1e-6 + 1e-5 * eps or out_of_range:
        notes.add(f"the attack returned examples outside the {norm} ball of eps {format_eps(eps)} "
                  f"(by up to {max(excess, 0.0):.3g}) or outside [0, 1]; they were projected back")
    delta = project((x_adv - x).float(), norm, eps).to(x.dtype)
    return (x + delta).clamp(0, 1)


def _norm_of(delta: torch.Tensor, norm: str) -> float:
    flat = delta.flatten(1).float()
    return float((flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)).max()) if len(flat) else 0.0


@dataclass
class _Job:
    """One attack at one budget, with its running counts."""
    spec: AttackSpec
    norm: str
    eps: float
    pmap: PerturbationMap
    robust: int = 0
    fooled: int = 0
    changed: int = 0
    max_norm: float = 0.0
    seconds: float = 0.0
    notes: set = field(default_factory=set)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.spec.name, self.norm, format_eps(self.eps)


@dataclass
class EvaluationResult:
    """``summary``: the results (what the JSON file holds); ``maps``: (attack, norm, eps_label) -> (H, W) map."""
    summary: dict
    maps: dict = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        return evaluation_frame(self.summary)


def _default_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def evaluate_model(model: nn.Module, dataset: Dataset, config: EvaluationConfig, progress=None,
                   description: str = "evaluate") -> EvaluationResult:
    """Evaluate ``model`` on the first ``config.n_samples`` of ``dataset`` ((image, label)
    pairs, images uint8 or float in [0, 1]). ``progress``: a rich Progress to report to."""
    device = _default_device(config.device)
    model = model.to(device).eval()
    with _frozen(model):
        return _evaluate(model, dataset, config, device, progress, description)


@contextlib.contextmanager
def _frozen(model: nn.Module):
    """No weight gradients while attacking (faster); the flags are restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# Gradient evaluations per image of AutoAttack's standard version (APGD-CE 100, APGD-T and
# FAB-T 9 targets x 100) and Square's forward-only queries: the work for an image that no
# attack breaks, so an upper bound (AutoAttack stops on images already broken).
AUTOATTACK_GRADIENTS = 100 + 9 * 100 + 9 * 100
AUTOATTACK_QUERIES = 5000


def autoattack_cost_seconds(model: nn.Module, dataset: Dataset, config: EvaluationConfig) -> float:
    """Upper estimate of the seconds AutoAttack takes in this evaluation, from one timed
    forward+backward and one forward of a batch on ``config.device``: 0 without AutoAttack."""
    n_runs = sum(a.kind == "autoattack" for a in config.attack_specs) * len(config.budgets)
    if not n_runs:
        return 0.0
    device = _default_device(config.device)
    n = min(config.n_samples, len(cast(Sized, dataset)))
    batch = min(config.batch_size, n)
    x = to_float(torch.stack([torch.as_tensor(dataset[i][0]) for i in range(batch)]).to(device)).requires_grad_(True)
    model = model.to(device).eval()
    with _frozen(model):
        model(x).sum().backward()  # warm-up
        t0 = time.perf_counter()
        model(x).sum().backward()
        grad_seconds = time.perf_counter() - t0
        with torch.no_grad():
            t0 = time.perf_counter()
            model(x)
            forward_seconds = time.perf_counter() - t0
    per_image = (AUTOATTACK_GRADIENTS * grad_seconds + AUTOATTACK_QUERIES * forward_seconds) / batch
    return per_image * n * n_runs


def _evaluate(model, dataset, config, device, progress, description) -> EvaluationResult:
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    attack_model = model
    if config.amp != "none":
        attack_model = _Autocast(model, torch.bfloat16 if config.amp == "bf16" else torch.float16, device.type)

    n = min(config.n_samples, len(dataset))
    loader = DataLoader(Subset(dataset, range(n)), batch_size=config.batch_size, shuffle=False,
                        pin_memory=device.type == "cuda")
    grid = spatial_grid(config.rotations, config.translations) if config.spatial else []
    spatial_attack = None
    if config.spatial and config.spatial_attack:
        spatial_attack = AttackConfig(norm=config.spatial_attack[0], eps=config.spatial_attack[1],
                                      steps=SPATIAL_ATTACK_STEPS)
    jobs: list[_Job] = []
    worst: dict[tuple[str, float], int] = {}
    clean_correct = num_classes = 0
    tally = SpatialTally(grid) if grid else None
    spatial_seconds = 0.0
    task = None
    if progress is not None:
        task = progress.add_task(description, total=len(loader) * (len(config.attacks) * len(config.budgets) + bool(grid)),
                                 status="")

    for batch_index, (x, y) in enumerate(loader):
        x, y = to_float(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            logits = model(x).float()
        clean_pred = logits.argmax(1)
        correct = clean_pred == y
        clean_correct += int(correct.sum())
        if not jobs:
            num_classes = logits.shape[1]
            jobs = [_Job(spec, norm, eps, PerturbationMap(*x.shape[-2:]))
                    for norm, eps in config.budgets for spec in config.attacks]
        survivors = {budget: correct.clone() for budget in config.budgets}
        for job in jobs:
            if task is not None:
                progress.update(task, status=f"{job.spec.name} {job.norm} {format_eps(job.eps)}")
            _sync(device)
            t0 = time.perf_counter()
            x_adv = job.spec.run(attack_model, x, y, job.norm, job.eps, _seed(config.seed, *job.key, batch_index),
                                 num_classes, job.notes)
            x_adv = _into_ball(x_adv, x, job.norm, job.eps, job.notes)
            with torch.no_grad():
                adv_pred = model(x_adv).argmax(1)
            _sync(device)
            job.seconds += time.perf_counter() - t0
            robust = correct & (adv_pred == y)
            survivors[(job.norm, job.eps)] &= robust
            job.robust += int(robust.sum())
            job.fooled += int((correct & (adv_pred != y)).sum())
            job.changed += int((adv_pred != clean_pred).sum())
            job.max_norm = max(job.max_norm, _norm_of(x_adv - x, job.norm))
            job.pmap.add(x, x_adv, correct & (adv_pred != y))
            if task is not None:
                progress.advance(task)
        for budget, ok in survivors.items():
            worst[budget] = worst.get(budget, 0) + int(ok.sum())
        if tally is not None:
            if task is not None:
                progress.update(task, status=f"spatial grid ({len(grid)} transforms)")
            _sync(device)
            t0 = time.perf_counter()
            torch.manual_seed(_seed(config.seed, "spatial", batch_index))
            tally.add(y, clean_pred, grid_predictions(model, x, y, grid, config.fill, spatial_attack, attack_model))
            _sync(device)
            spatial_seconds += time.perf_counter() - t0
            if task is not None:
                progress.advance(task)

    pct = lambda k: 100.0 * k / max(n, 1)  # noqa: E731
    attacks, maps = [], {}
    for job in jobs:
        maps[job.key] = job.pmap.mean()
        attacks.append({"attack": job.spec.name, "kind": job.spec.kind, "norm": job.norm, "eps": job.eps,
                        "eps_label": format_eps(job.eps), "params": job.spec.params(job.norm, job.eps, num_classes),
                        "robust_acc": pct(job.robust), "fooling_rate": pct(job.changed),
                        "success_rate": 100.0 * job.fooled / clean_correct if clean_correct else math.nan,
                        "max_perturbation": job.max_norm, "seconds": job.seconds,
                        "perturbation": job.pmap.summary(config.border_widths), "notes": sorted(job.notes)})
    budgets = [{"norm": norm, "eps": eps, "eps_label": format_eps(eps), "attacks": [s.name for s in config.attacks],
                "robust_acc": pct(worst.get((norm, eps), 0))} for norm, eps in config.budgets if config.attacks]
    spatial = None
    if tally is not None:
        spatial = {"fill": config.fill, "interpolation": INTERPOLATION, "rotation_unit": "degrees",
                   "translation_unit": "fraction of the image side",
                   "attack": spatial_attack.to_dict() if spatial_attack else None,
                   "seconds": spatial_seconds, **tally.summary()}
    summary = {"format": RESULTS_FORMAT, "format_version": FORMAT_VERSION, "n_samples": n,
               "num_classes": num_classes, "clean_acc": pct(clean_correct), "attacks": attacks, "budgets": budgets,
               "spatial": spatial, "config": config.to_dict(), "device": str(device),
               "versions": _versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return EvaluationResult(summary, maps)


def _versions() -> dict:
    from filterdb.training.checkpoint import versions
    return {**versions(), "pyautoattack": _autoattack_version()}


def headline(summary: dict, preferred: list[tuple[str, float]]) -> dict | None:
    """The budget behind the model table's robust_acc: the first of ``preferred`` that was
    evaluated, else Linf 8/255, else the first budget; its worst case over all attacks."""
    budgets = summary.get("budgets") or []
    for norm, eps in [*preferred, ("Linf", 8 / 255)]:
        match = [b for b in budgets if b["norm"] == norm and math.isclose(b["eps"], eps, rel_tol=1e-6)]
        if match:
            break
    else:
        match = budgets[:1]
    if not match:
        return None
    b = match[0]
    return {"threat_model": b["norm"], "eps": b["eps"], "eps_label": b["eps_label"], "robust_acc": b["robust_acc"],
            "robust_attack": "+".join(b["attacks"])}


# -- checkpoints and files --------------------------------------------------------------------

def evaluation_path(checkpoint: str | Path) -> Path:
    """``run/best.pt`` -> ``run/best.pt.eval.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".eval.json")


def maps_path(checkpoint: str | Path) -> Path:
    """``run/best.pt`` -> ``run/best.pt.eval.h5``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".eval.h5")


def _stderr_progress():
    from filterdb.progress import progress_bar
    return progress_bar(unit="batches")


def evaluate_checkpoint(checkpoint: str | Path, config: EvaluationConfig | None = None, *, save: bool = True,
                        progress: bool = False) -> EvaluationResult:
    """Evaluate a training checkpoint on its dataset's test split; with ``save``, write the
    results and perturbation maps beside it (replacing earlier ones)."""
    from filterdb.records import sha256_file
    from filterdb.training.checkpoint import load_checkpoint
    from filterdb.training.data import load_dataset

    config = config or EvaluationConfig()
    path = Path(checkpoint)
    sha = sha256_file(path) if path.is_file() else ""
    ckpt = load_checkpoint(path)
    config = with_own_budget(config, own_threat(ckpt))
    check_budgets(config.budgets, ckpt.input_shape)
    model = ckpt.build_model()
    dataset = load_dataset(ckpt.dataset, "test", config.data_dir)
    if progress and _default_device(config.device).type == "cpu":
        seconds = autoattack_cost_seconds(model, dataset, config)
        if seconds > 60:
            print(f"{path}: AutoAttack on the CPU may take up to {seconds / 60:.0f} min here "
                  f"({min(config.n_samples, len(dataset))} images, {len(config.budgets)} budget(s); an upper estimate "
                  f"from one timed batch). For a quick evaluation use --attacks pgd, or fewer images (-n).",
                  file=sys.stderr, flush=True)
    bar = _stderr_progress() if progress else contextlib.nullcontext(None)
    with bar as prog:
        result = evaluate_model(model, dataset, config, progress=prog, description=f"{path.parent.name}/{path.name}")
    if sha256_file(path) != sha:
        raise FilterDBError(f"{path}: the checkpoint changed while it was evaluated (retrained?); "
                            f"run 'filterdb evaluate {path}' again")
    s = result.summary
    preferred = [config.headline] if isinstance(config.headline, tuple) else []
    s.update(checkpoint=str(path), checkpoint_sha256=sha, model_string=ckpt.model_string,
             dataset=ckpt.dataset, method=ckpt.method, split="test", headline=headline(s, preferred),
             maps_file=maps_path(path).name)
    if save:
        save_evaluation(result, path)
    return result


def _atomic(path: Path, write) -> None:
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except OSError as exc:
        raise FilterDBError(f"{path}: cannot write evaluation results ({exc.strerror or exc}); "
                            f"make the checkpoint's directory writable") from None


def _strict(value):
    """JSON without NaN / Infinity: non-finite numbers become null."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def save_evaluation(result: EvaluationResult, checkpoint: str | Path) -> tuple[Path, Path]:
    """Write ``<checkpoint>.eval.h5`` (maps) and then ``<checkpoint>.eval.json`` (results), each atomically."""
    import h5py

    checkpoint = Path(checkpoint)
    json_path, h5_path = evaluation_path(checkpoint), maps_path(checkpoint)
    rows = {(a["attack"], a["norm"], a["eps_label"]): a for a in result.summary["attacks"]}

    def write_maps(tmp: Path):
        with h5py.File(tmp, "w") as f:
            f.attrs["format"], f.attrs["format_version"] = MAPS_FORMAT, FORMAT_VERSION
            f.attrs["checkpoint_sha256"] = result.summary.get("checkpoint_sha256", "")
            group = f.create_group("maps")
            for i, ((attack, norm, label), pmap) in enumerate(result.maps.items()):
                ds = group.create_dataset(str(i), data=np.asarray(pmap, dtype=np.float16))
                row = rows.get((attack, norm, label))
                ds.attrs.update(attack=attack, norm=norm, eps=float(row["eps"] if row else parse_eps(label)),
                                eps_label=label, n_samples=int(row["perturbation"]["n_samples"] if row else 0))

    def write_json(tmp: Path):
        with open(tmp, "w") as fh:
            json.dump(_strict(result.summary), fh, indent=1, allow_nan=False)
            fh.write("\n")

    _atomic(h5_path, write_maps)
    _atomic(json_path, write_json)
    return json_path, h5_path


def _json_file(path: str | Path) -> Path:
    path = Path(path)
    return path if path.name.endswith(".eval.json") else evaluation_path(path)


def load_evaluation(path: str | Path, verify: bool = True) -> dict:
    """The results of a checkpoint (give the checkpoint or its ``.eval.json``), border
    ratios restored from their means (inf where the interior is untouched). With
    ``verify``, results of other weights than the checkpoint's (retrained since) are an error."""
    json_path = _json_file(path)
    if not json_path.is_file():
        raise FilterDBError(f"{json_path}: no evaluation results; run 'filterdb evaluate {json_path.name[:-10]}'")
    try:
        summary = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        raise FilterDBError(f"{json_path}: unreadable evaluation results ({exc}); run 'filterdb evaluate' again") from None
    if summary.get("format") != RESULTS_FORMAT:
        raise FilterDBError(f"{json_path}: not a filterdb evaluation file")
    checkpoint = json_path.with_name(json_path.name[: -len(".eval.json")])
    if verify and checkpoint.is_file() and summary.get("checkpoint_sha256"):
        from filterdb.records import sha256_file
        if sha256_file(checkpoint) != summary["checkpoint_sha256"]:
            raise FilterDBError(f"{json_path}: the results belong to earlier weights of {checkpoint.name} (its "
                                f"sha256 changed); run 'filterdb evaluate {checkpoint}' again")
    for attack in summary.get("attacks", []):
        for b in attack["perturbation"]["border"]:
            b["ratio"] = ratio(b["border_mean"], b["interior_mean"])
    return summary


def load_perturbation_maps(path: str | Path, verify: bool = True) -> dict[tuple[str, str, str], np.ndarray]:
    """(attack, norm, eps_label) -> float16 (H, W) perturbation map, e.g.
    ``maps[("pgd-20", "Linf", "8/255")]``; give the checkpoint or its ``.eval.h5``. With
    ``verify``, maps of other weights than the checkpoint's (retrained since) are an error."""
    import h5py

    path = Path(path)
    h5_path = path if path.name.endswith(".eval.h5") else maps_path(path)
    if not h5_path.is_file():
        raise FilterDBError(f"{h5_path}: no perturbation maps; run 'filterdb evaluate' on the checkpoint")
    checkpoint = h5_path.with_name(h5_path.name[: -len(".eval.h5")])
    try:
        f = h5py.File(h5_path, "r")
    except OSError as exc:
        raise FilterDBError(f"{h5_path}: unreadable perturbation maps ({exc}); run 'filterdb evaluate' again") from None
    with f:
        if f.attrs.get("format") != MAPS_FORMAT or "maps" not in f:
            raise FilterDBError(f"{h5_path}: not a filterdb perturbation-maps file")
        sha = f.attrs.get("checkpoint_sha256", "")
        if verify and sha and checkpoint.is_file():
            from filterdb.records import sha256_file
            if sha256_file(checkpoint) != sha:
                raise FilterDBError(f"{h5_path}: the maps belong to earlier weights of {checkpoint.name} (its "
                                    f"sha256 changed); run 'filterdb evaluate {checkpoint}' again")
        return {(str(ds.attrs["attack"]), str(ds.attrs["norm"]), str(ds.attrs["eps_label"])): ds[()]
                for _, ds in sorted(f["maps"].items(), key=lambda kv: int(kv[0]))}


def evaluation_frame(summary: dict) -> pd.DataFrame:
    """One row per attack and budget (then the worst case per budget when several attacks ran,
    then the spatial grid): accuracy, fooling rate, border ratios (columns border_b1, ...)."""
    base = {"checkpoint": Path(summary.get("checkpoint", "")).name, "model": summary.get("model_string", ""),
            "clean_acc": summary["clean_acc"]}
    widths = summary["config"]["border_widths"]
    rows = []
    for a in summary["attacks"]:
        ratios = {f"border_b{b['width']}": ratio(b["border_mean"], b["interior_mean"]) for b in a["perturbation"]["border"]}
        rows.append({**base, "attack": a["attack"], "threat_model": a["norm"], "eps": a["eps_label"],
                     "robust_acc": a["robust_acc"], "fooling_rate": a["fooling_rate"],
                     "n_perturbed": a["perturbation"]["n_samples"], **ratios})
    for b in summary.get("budgets", []):
        if len(b["attacks"]) > 1:
            rows.append({**base, "attack": "worst case", "threat_model": b["norm"], "eps": b["eps_label"],
                         "robust_acc": b["robust_acc"], "fooling_rate": math.nan, "n_perturbed": math.nan})
    sp = summary.get("spatial")
    if sp:
        attack = sp["attack"]
        label = "spatial" + (f"+pgd-{attack['steps']}" if attack else "")
        rows.append({**base, "attack": label, "threat_model": f"grid x{len(sp['grid'])} {sp['fill']}",
                     "eps": format_eps(attack["eps"]) if attack else "", "robust_acc": sp["worst_case_acc"],
                     "fooling_rate": sp["any_fooling_rate"], "n_perturbed": math.nan})
    columns = ["checkpoint", "model", "attack", "threat_model", "eps", "clean_acc", "robust_acc", "fooling_rate",
               "n_perturbed", *[f"border_b{w}" for w in widths]]
    return pd.DataFrame(rows, columns=columns)


def evaluation_record(checkpoint: str | Path, training_metrics: dict | None = None) -> dict:
    """Model-table columns from the evaluation beside a checkpoint; {} when there is none
    (or it belongs to earlier weights: then with a warning).

    evaluation_json: the complete results as compact JSON (border ratios as means), with the
    number of test images they were measured on (``n_samples``). The headline budget's
    threat_model, eps, robust_acc (worst case over the attacks run), robust_attack (their
    names joined by '+', e.g. "pgd-20+cw-20+autoattack") and clean_acc replace the training
    run's figures (``training_metrics``: the checkpoint's test metrics) only when the
    evaluation covered at least as many test images as the training run measured on
    (``n_eval``) or the training run has no such figure: a 50-image evaluation never
    overwrites a full-test accuracy.
    """
    if not evaluation_path(checkpoint).is_file():
        return {}
    try:
        summary = load_evaluation(checkpoint)
    except FilterDBError as exc:
        warnings.warn(f"evaluation results ignored: {exc}", stacklevel=2)
        return {}
    record = {"evaluation_json": json.dumps(_strict(summary), separators=(",", ":"), allow_nan=False)}
    training_metrics = training_metrics or {}
    covers = summary["n_samples"] >= int(training_metrics.get("n_eval") or 0)
    if covers or training_metrics.get("clean_acc") is None:
        record["clean_acc"] = summary["clean_acc"]
    top = summary.get("headline")
    if top and (covers or training_metrics.get("robust_acc") is None):
        record.update(threat_model=top["threat_model"], eps=top["eps"], robust_acc=top["robust_acc"],
                      robust_attack=top["robust_attack"])
    return record


__all__ = ["AttackSpec", "EvaluationConfig", "EvaluationResult", "parse_attacks", "parse_budgets", "parse_threat",
           "run_autoattack", "evaluate_model", "evaluate_checkpoint", "save_evaluation", "load_evaluation",
           "load_perturbation_maps", "evaluation_frame", "evaluation_record", "evaluation_path", "maps_path",
           "headline", "default_attacks", "with_own_budget", "own_threat", "ATTACK_KINDS", "AUTOATTACK_PARTS", "AMP_MODES"]
