"""The demo leaderboard: matched pairs of small CNNs trained on scikit-learn's bundled digits.

The embedded default that runs with no network and no GPU. Each pair is a normally
trained and a PGD-trained model with the same seed, initial weights and data order,
trained through ``filterdb.training`` and cached under $FILTERDB_HOME/demo-checkpoints,
so the second build is instant. Clean and PGD robust accuracy land in the model table, and
each model's ``pair`` names its twin.

Eight seeds of two architectures (a plain CNN and a ResNet, 16 pairs), so that a paired test
over one architecture's 8 pairs can reach p < 0.01. The schedule (10 epochs, batch 128,
SGD lr 0.05) and the attack (PGD-5, Linf 0.1) were chosen for cost and a sane accuracy,
not for any direction of the filter metrics. The first build trains the missing pairs in
parallel worker processes, one thread each (these 8x8 models are far faster that way).
"""
from __future__ import annotations

import fcntl
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from filterdb import paths
from filterdb.sources import Leaderboard
from filterdb.sources.base import LoadedModel, ModelSpec

SOURCE = "demo"
DEMO_EPS = 0.1  # Linf budget on [0, 1] digits (8x8, 16 grey levels): strong enough to matter
DEMO_SEEDS = range(8)
DEMO_ARCHITECTURES = ("cnn4-16", "resnet8-8")
DEMO_EPOCHS = 10
DEMO_TRAINING: dict[str, Any] = {"batch_size": 128, "lr": 0.05}


@dataclass(frozen=True)
class DemoPair:
    name: str
    model_string: str
    seed: int
    epochs: int = DEMO_EPOCHS


DEMO_PAIRS = tuple(DemoPair(f"{model}-s{seed}", model, seed) for model in DEMO_ARCHITECTURES for seed in DEMO_SEEDS)
ROLES = ("normal", "pgd")


def demo_attack():
    from filterdb.training.attacks import AttackConfig
    return AttackConfig(norm="Linf", eps=DEMO_EPS, steps=5, step_size=DEMO_EPS / 2)


def pair_config(pair: DemoPair):
    """The robust run's TrainConfig (``training.pair_training.pair_configs`` derives the normal one)."""
    from filterdb.training.trainer import TrainConfig
    return TrainConfig(model_string=pair.model_string, dataset="digits", method="pgd", attack=demo_attack(),
                       seed=pair.seed, epochs=pair.epochs, **DEMO_TRAINING)


def pair_checkpoints(pair: DemoPair, cache: Path) -> dict[str, Path]:
    """Role -> checkpoint path of ``pair``; trains every demo pair not cached yet first."""
    if not is_cached(pair, cache):
        train_missing(cache)
    return {role: cache / pair.name / role / "last.pt" for role in ROLES}


def train_missing(cache: Path, workers: int | None = None) -> list[str]:
    """Train the demo pairs whose checkpoints are not cached, ``workers`` processes at a time
    (default: one per CPU core); returns the names of the pairs trained."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:  # parallel build workers must not train the same pair twice
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [pair for pair in DEMO_PAIRS if not is_cached(pair, cache)]
        if not missing:
            return []
        workers = min(workers or os.cpu_count() or 1, len(missing))
        print(f"demo: training {len(missing)} matched pairs on digits ({workers} processes) ...", file=sys.stderr)
        t0 = time.perf_counter()
        if workers == 1:
            for i, pair in enumerate(missing, 1):
                _train_pair(pair, cache)
                _report(pair, i, len(missing), t0)
        else:
            # fork, as 'filterdb build --jobs' does: spawn would re-run a caller's unguarded script
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = {pool.submit(_train_pair, pair, cache): pair for pair in missing}
                for i, future in enumerate(as_completed(futures), 1):
                    future.result()
                    _report(futures[future], i, len(missing), t0)
        return [pair.name for pair in missing]


def _train_pair(pair: DemoPair, cache: Path) -> None:
    import torch

    from filterdb.training.pair_training import train_pair_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_pair_config(pair_config(pair), cache / pair.name)
    finally:
        torch.set_num_threads(threads)


def _report(pair: DemoPair, done: int, total: int, t0: float) -> None:
    print(f"demo: {done}/{total} {pair.name} trained ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)


def is_cached(pair: DemoPair, cache: Path) -> bool:
    """Both checkpoints of ``pair`` finished (test metrics recorded) with today's demo settings."""
    from filterdb.errors import FilterDBError
    from filterdb.training.checkpoint import load_checkpoint
    from filterdb.training.pair_training import pair_configs

    for role, config in zip(ROLES, pair_configs(pair_config(pair))):
        path = cache / pair.name / role / "last.pt"
        if not path.is_file():
            return False
        try:
            ckpt = load_checkpoint(path)
        except FilterDBError:
            return False
        if ckpt.epoch != pair.epochs or "clean_acc" not in ckpt.metrics or ckpt.config != config.to_dict():
            return False
    return True


def load_demo_model(pair: DemoPair, role: str, cache: Path, spec: ModelSpec) -> LoadedModel:
    from filterdb.training.checkpoint import load_checkpoint
    from filterdb.training.checkpoint_source import checkpoint_record

    ckpt = load_checkpoint(pair_checkpoints(pair, cache)[role])
    return LoadedModel(spec, [ckpt.build_model()], ckpt.input_shape, weights_path=ckpt.path,
                       record=checkpoint_record(ckpt))


def demo_specs(cache: Path | None = None, **_options) -> list[ModelSpec]:
    cache = Path(cache) if cache else paths.demo_checkpoint_dir()
    specs = []
    for pair in DEMO_PAIRS:
        for role in ROLES:
            record = {"dataset": "digits", "training": "normal" if role == "normal" else "robust",
                      "model_string": pair.model_string}
            specs.append(ModelSpec(SOURCE, f"digits/{pair.name}/{role}", record=record,
                                   load=partial(load_demo_model, pair, role, cache)))
    return specs


LEADERBOARDS = {
    "demo": Leaderboard("demo", f"{len(DEMO_PAIRS)} matched pairs (normal / PGD Linf eps={DEMO_EPS}): "
                                f"{' and '.join(DEMO_ARCHITECTURES)}, seeds {DEMO_SEEDS.start}-{DEMO_SEEDS.stop - 1}, "
                                "on scikit-learn digits; trained locally on first use (about two minutes), then cached",
                        demo_specs),
}
