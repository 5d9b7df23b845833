"""Training submodule: models from model strings, training methods, attacks, checkpoints.

Names are exported lazily (PEP 562) so that ``import filterdb.training`` stays cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # model strings and the model factory
    "create_model": "registry",
    "parse_model_string": "registry",
    "list_models": "registry",
    "describe_models": "registry",
    "check_input_size": "registry",
    "min_input_size": "registry",
    "ArchSpec": "registry",
    "ModelStringError": "registry",
    "ModelBuildError": "registry",
    # attacks
    "AttackConfig": "attacks",
    "pgd": "attacks",
    "fgsm": "attacks",
    "cw_margin_loss": "attacks",
    "clean_accuracy": "attacks",
    "robust_accuracy": "attacks",
    "parse_eps": "attacks",
    # training, matched pairs, checkpoints
    "TrainConfig": "trainer",
    "Trainer": "trainer",
    "TrainResult": "trainer",
    "train": "trainer",
    "train_pair": "pairs",
    "train_pair_config": "pairs",
    "train_counterpart": "pairs",
    "check_pair": "pairs",
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_dataset": "data",
    "dataset_info": "data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
