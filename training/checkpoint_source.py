"""The checkpoint source: filterdb training checkpoints, ingested with all their metadata.

A checkpoint's name says what it is and carries its content's digest (``checkpoint_name``):
``digits/cnn4-16/s0/pgd/pair-cnn4-16-s0@508c16cd``. Adding the same file twice is a no-op and
a retrained model gets a new id.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from filterdb.errors import FilterDBError
from filterdb.evaluation_files import evaluation_record
from filterdb.integrity import sha256_file
from filterdb.sources.base import LoadedModel, ModelSpec

SOURCE = "checkpoint"


def checkpoint_spec(path: str | Path) -> ModelSpec:
    path = Path(path)
    if not path.is_file():
        raise FilterDBError(f"{path}: no such checkpoint file")
    from filterdb.training.checkpoint import load_checkpoint

    sha = sha256_file(path)
    try:
        name = checkpoint_name(load_checkpoint(path), sha)
    except FilterDBError:  # not a readable checkpoint: the build reports its error as this model's failure
        name = f"{path.resolve().parent.name}/{path.stem}@{sha[:8]}"
    return ModelSpec(SOURCE, name, record={"weights_sha256": sha}, load=partial(load_checkpoint_model, path),
                     origin=str(path))


def checkpoint_name(ckpt, sha256: str) -> str:
    """``dataset/model string/s<seed>/method/run[:stem]@<sha256[:8]>``, e.g.
    ``digits/cnn4-16/s0/pgd/pair-cnn4-16-s0@508c16cd``: what the model is, how it was trained
    and in which run (the pair's name for a matched pair; the stem when not ``last``), and the
    weights' digest, so that the same file added twice is one model and a retrained one is another."""
    seed = ckpt.pairing.get("seed", ckpt.config.get("seed"))
    run_dir = ckpt.path.resolve().parent
    run = ckpt.pairing.get("pair") or (run_dir.parent.name if run_dir.name == ckpt.method else run_dir.name)
    stem = "" if ckpt.path.stem == "last" else f":{ckpt.path.stem}"
    seed_part = f"s{seed}" if seed is not None else "s?"
    return f"{ckpt.dataset}/{ckpt.model_string}/{seed_part}/{ckpt.method}/{run}{stem}@{sha256[:8]}"


def checkpoint_dir_specs(directory: str | Path) -> list[ModelSpec]:
    """Every ``*.pt`` under ``directory`` (recursively), in path order."""
    paths = sorted(p for p in Path(directory).rglob("*.pt") if not p.name.startswith("."))
    if not paths:
        raise FilterDBError(f"{directory}: no checkpoint files (*.pt) found; give the run directory of 'filterdb train'")
    return [checkpoint_spec(p) for p in paths]


def checkpoint_record(ckpt) -> dict:
    """Model-table columns from a training checkpoint's self-description."""
    metrics = ckpt.metrics
    attack = ckpt.attack or {}
    return {
        "dataset": ckpt.dataset,
        "training": "robust" if ckpt.robust else "normal",
        "training_method": ckpt.method,
        "architecture": ckpt.model_string.split("_")[0],
        "model_string": ckpt.model_string,
        "threat_model": metrics.get("threat_model") or attack.get("norm", ""),
        "eps": metrics.get("eps", attack.get("eps")),
        "clean_acc": metrics.get("clean_acc"),
        "robust_acc": metrics.get("robust_acc"),
        "robust_attack": metrics.get("robust_attack", ""),
        "extra_data": False,
        "pair": pair_name(ckpt.pairing),
        "pair_role": ckpt.pairing.get("role", ""),
        "seed": ckpt.pairing.get("seed", -1),
    }


def pair_name(pairing: dict) -> str:
    """The pair a checkpoint was trained in: its pair directory and the digest of the shared initial
    weights (``name@init[:8]``), so that two runs of the same pair name never look like twins."""
    if not pairing.get("pair"):
        return ""
    init = pairing.get("init_sha256", "")
    return f"{pairing['pair']}@{init[:8]}" if init else str(pairing["pair"])


def load_checkpoint_model(path: Path, spec: ModelSpec) -> LoadedModel:
    from filterdb.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    # Results of 'filterdb evaluate' beside the checkpoint: see evaluation_record for what they replace.
    record = {**checkpoint_record(ckpt), **evaluation_record(path, ckpt.metrics)}
    return LoadedModel(spec, [ckpt.build_model()], ckpt.input_shape, weights_path=path, record=record)
