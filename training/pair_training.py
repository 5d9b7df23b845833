"""Matched pairs and normal counterparts.

A matched pair is a normally trained and an adversarially trained model that differ only
in the training method: same model string, seed, initial weights, data order and
augmentation, schedule, checkpoint-selection rule, and the same attack measuring their
robust accuracy. Each checkpoint records ``pairing`` (pair name, role, seed,
init_sha256) and every epoch's data-order digest in its history, so that the match can
be checked afterwards (``check_pair``).

A counterpart is a normally trained model of a RobustBench model's architecture (built
from its id with random weights), to compare against the robust original.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from filterdb.errors import FilterDBError
from filterdb.training.attacks import AttackConfig
from filterdb.training.checkpoint import load_checkpoint
from filterdb.training.methods import ROBUST_METHODS
from filterdb.training.registry import ROBUSTBENCH_PREFIX
from filterdb.training.trainer import TrainConfig, Trainer, TrainResult, initial_weights


def pair_configs(robust: TrainConfig) -> tuple[TrainConfig, TrainConfig]:
    """The (normal, robust) configurations of a pair: ``robust`` and its copy with method
    standard; both measure robustness with the robust run's evaluation attack."""
    if robust.method not in ROBUST_METHODS:
        raise FilterDBError(f"robust method of a pair must be one of {', '.join(ROBUST_METHODS)}, not {robust.method!r}")
    normal = TrainConfig.from_dict({**robust.to_dict(), "method": "standard", "attack": None, "beta": None})
    return normal, robust


def train_pair_config(robust: TrainConfig, out_dir: str | Path, progress: bool = False,
                      fit: Callable[..., TrainResult] | None = None) -> tuple[TrainResult, TrainResult]:
    """Train the pair of ``robust`` into ``out_dir/normal`` and ``out_dir/<robust method>``, and
    check that the two checkpoints match (``check_pair``).

    ``fit(config, run_dir, init_state=..., pairing=...)`` trains one run (default: a fresh
    ``Trainer``; the CLI passes one that resumes).
    """
    out_dir = Path(out_dir)
    if fit is None:
        def fit(config, run_dir, **trainer_args):
            return Trainer(config, run_dir, progress=progress, **trainer_args).fit()
    normal_cfg, robust_cfg = pair_configs(robust)
    init = initial_weights(normal_cfg)
    results = []
    for role, cfg in (("normal", normal_cfg), ("robust", robust_cfg)):
        pairing = {"pair": out_dir.name, "role": role}
        results.append(fit(cfg, out_dir / ("normal" if role == "normal" else cfg.method), init_state=init,
                           pairing=pairing))
    check_pair(results[0].checkpoint, results[1].checkpoint)
    return results[0], results[1]


def train_pair(model_string: str, dataset: str, out_dir: str | Path, seed: int = 0, epochs: int = 10,
               robust_method: str = "pgd", attack: AttackConfig | None = None, progress: bool = False,
               **options) -> tuple[Path, Path]:
    """Train a matched pair and return the paths of (normal, robust) checkpoints.

    Each checkpoint records clean and robust accuracy (PGD at ``attack``'s norm and eps
    unless ``eval_attack=`` is given) on the test split. ``options`` are further
    ``TrainConfig`` fields: batch_size, lr, selection, eval_attack, amp, device, ...
    """
    config = TrainConfig(model_string=model_string, dataset=dataset, method=robust_method, attack=attack, seed=seed,
                         epochs=epochs, **options)
    normal, robust = train_pair_config(config, out_dir, progress=progress)
    return normal.checkpoint, robust.checkpoint


def check_pair(normal_path: str | Path, robust_path: str | Path) -> None:
    """Raise ``FilterDBError`` unless the two checkpoints form a matched pair."""
    a, b = load_checkpoint(normal_path), load_checkpoint(robust_path)
    problems = []
    for key in ("seed", "init_sha256", "data_seed"):
        if a.pairing.get(key) != b.pairing.get(key):
            problems.append(f"{key} differs ({a.pairing.get(key)} vs {b.pairing.get(key)})")
    if [h.get("order_sha256") for h in a.history] != [h.get("order_sha256") for h in b.history]:
        problems.append("data order differs")
    if a.selection != b.selection:
        problems.append(f"selection rule differs ({a.selection} vs {b.selection})")
    if a.model_string != b.model_string or a.dataset != b.dataset:
        problems.append("model or dataset differs")
    if problems:
        raise FilterDBError(f"{normal_path} and {robust_path} are not a matched pair: {'; '.join(problems)}")


def counterpart_model_string(robustbench_id: str, dataset: str = "cifar10", threat_model: str = "Linf") -> str:
    """``robustbench:<dataset>/<threat>/<name>`` for a bare RobustBench name; full ids pass through."""
    if robustbench_id.startswith(ROBUSTBENCH_PREFIX):
        return robustbench_id
    if robustbench_id.count("/") == 2:
        return ROBUSTBENCH_PREFIX + robustbench_id
    return f"{ROBUSTBENCH_PREFIX}{dataset}/{threat_model}/{robustbench_id}"


def train_counterpart(robustbench_id: str, out_dir: str | Path, dataset: str = "cifar10", threat_model: str = "Linf",
                      progress: bool = False, **options) -> TrainResult:
    """Train a normal model of a RobustBench model's architecture (random initial weights)."""
    model_string = counterpart_model_string(robustbench_id, dataset, threat_model)
    config = TrainConfig(model_string=model_string, dataset=dataset, method="standard", **options)
    return Trainer(config, out_dir, pairing={"counterpart_of": model_string}, progress=progress).fit()
