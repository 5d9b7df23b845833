"""The demo leaderboard: matched pairs of small CNNs trained on scikit-learn's bundled digits.

The embedded default that runs with no network and no GPU. Each pair is a normally
trained and a PGD-trained model with the same seed, initial weights and data order,
trained through ``filterdb.training`` and cached under $FILTERDB_HOME/demo-checkpoints,
so the second build is instant. Clean and PGD robust accuracy land in the model table.
"""
from __future__ import annotations

import fcntl
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from filterdb import paths
from filterdb.sources import Leaderboard
from filterdb.sources.base import LoadedModel, ModelSpec

SOURCE = "demo"
DEMO_EPS = 0.1  # Linf budget on [0, 1] digits (8x8, 16 grey levels): strong enough to matter


@dataclass(frozen=True)
class DemoPair:
    name: str
    model_string: str
    seed: int
    epochs: int


DEMO_PAIRS = (
    DemoPair("cnn4-16-s0", "cnn4-16", seed=0, epochs=12),
    DemoPair("cnn4-16-s1", "cnn4-16", seed=1, epochs=12),
    DemoPair("resnet8-8-s0", "resnet8-8", seed=0, epochs=12),
)
ROLES = ("normal", "pgd")


def demo_attack():
    from filterdb.training.attacks import AttackConfig
    return AttackConfig(norm="Linf", eps=DEMO_EPS, steps=5, step_size=DEMO_EPS / 2)


def pair_checkpoints(pair: DemoPair, cache: Path) -> dict[str, Path]:
    """Train ``pair`` unless its checkpoints are cached; returns role -> checkpoint path."""
    from filterdb.training.pairs import train_pair

    out = cache / pair.name
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:  # parallel build workers must not train the same pair twice
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = {role: out / role / "last.pt" for role in ROLES}
        if all(_is_final(p, pair) for p in found.values()):
            return found
        normal, robust = train_pair(pair.model_string, "digits", out, seed=pair.seed, epochs=pair.epochs,
                                    robust_method="pgd", attack=demo_attack(), batch_size=64, lr=0.05)
        return {"normal": Path(normal), "pgd": Path(robust)}


def _is_final(path: Path, pair: DemoPair) -> bool:
    """A checkpoint of a finished run (test metrics recorded), not one left by an interrupted run."""
    from filterdb.errors import FilterDBError
    from filterdb.training.checkpoint import load_checkpoint

    if not path.is_file():
        return False
    try:
        ckpt = load_checkpoint(path)
    except FilterDBError:
        return False
    return ckpt.epoch == pair.epochs and "clean_acc" in ckpt.metrics


def load_demo_model(pair: DemoPair, role: str, cache: Path, spec: ModelSpec) -> LoadedModel:
    from filterdb.sources.checkpoint import checkpoint_record
    from filterdb.training.checkpoint import load_checkpoint

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
    "demo": Leaderboard("demo", f"{len(DEMO_PAIRS)} matched pairs (normal / PGD Linf eps={DEMO_EPS}) of small CNNs "
                                "on scikit-learn digits; trained locally on first use (about a minute), then cached",
                        demo_specs),
}
