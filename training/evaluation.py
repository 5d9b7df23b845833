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

What to measure is an ``EvaluationConfig`` (``filterdb.training.evaluation_config``; attacks as
written, ``filterdb.training.attack_specs``). ``evaluate_checkpoint`` writes the results beside the
checkpoint, in the files ``filterdb.evaluation_files`` defines and reads (``run/best.pt.eval.json``,
``run/best.pt.eval.h5``).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
import zlib
from collections.abc import Sized
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from filterdb.eps import format_eps
from filterdb.errors import FilterDBError
from filterdb.evaluation_files import FORMAT_VERSION, RESULTS_FORMAT, evaluation_frame, maps_path, save_evaluation
from filterdb.training.attack_specs import AttackSpec, check_budgets
from filterdb.training.attacks import AttackConfig, project
from filterdb.training.autoattack import AUTOATTACK_GRADIENTS, AUTOATTACK_QUERIES, autoattack_version
from filterdb.training.data import to_float
from filterdb.training.evaluation_config import (
    SPATIAL_ATTACK_STEPS,
    EvaluationConfig,
    default_device,
    own_threat,
    with_own_budget,
)
from filterdb.training.perturbation import PerturbationMap
from filterdb.training.precision import autocast_dtype
from filterdb.training.spatial import INTERPOLATION, SpatialTally, grid_predictions, spatial_grid


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


def evaluate_model(model: nn.Module, dataset: Dataset, config: EvaluationConfig, progress=None,
                   description: str = "evaluate") -> EvaluationResult:
    """Evaluate ``model`` on the first ``config.n_samples`` of ``dataset`` ((image, label)
    pairs, images uint8 or float in [0, 1]). ``progress``: a rich Progress to report to."""
    device = default_device(config.device)
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


def _evaluate(model, dataset, config, device, progress, description) -> EvaluationResult:
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    attack_model = model
    if config.amp != "none":
        attack_model = _Autocast(model, autocast_dtype(config.amp), device.type)

    n = min(config.n_samples, len(cast(Sized, dataset)))
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
               "versions": _versions(), "created": datetime.now(UTC).isoformat(timespec="seconds")}
    return EvaluationResult(summary, maps)


def autoattack_cost_seconds(model: nn.Module, dataset: Dataset, config: EvaluationConfig) -> float:
    """Upper estimate of the seconds AutoAttack takes in this evaluation, from one timed
    forward+backward and one forward of a batch on ``config.device``: 0 without AutoAttack."""
    n_runs = sum(a.kind == "autoattack" for a in config.attack_specs) * len(config.budgets)
    if not n_runs:
        return 0.0
    device = default_device(config.device)
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


def _versions() -> dict:
    from filterdb.training.checkpoint import versions
    return {**versions(), "pyautoattack": autoattack_version()}


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


def _stderr_progress():
    from filterdb.progress import progress_bar
    return progress_bar(unit="batches")


def evaluate_checkpoint(checkpoint: str | Path, config: EvaluationConfig | None = None, *, save: bool = True,
                        progress: bool = False) -> EvaluationResult:
    """Evaluate a training checkpoint on its dataset's test split; with ``save``, write the
    results and perturbation maps beside it (replacing earlier ones)."""
    from filterdb.integrity import sha256_file
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
    if progress and default_device(config.device).type == "cpu":
        seconds = autoattack_cost_seconds(model, dataset, config)
        if seconds > 60:
            print(f"{path}: AutoAttack on the CPU may take up to {seconds / 60:.0f} min here "
                  f"({min(config.n_samples, len(cast(Sized, dataset)))} images, {len(config.budgets)} budget(s); an upper estimate "
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
        save_evaluation(result.summary, result.maps, path)
    return result


__all__ = ["EvaluationResult", "autoattack_cost_seconds", "evaluate_checkpoint", "evaluate_model", "headline"]
