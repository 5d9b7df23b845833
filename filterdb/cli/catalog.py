"""Every model the command line can name: the leaderboards of ``filterdb build --leaderboard``
(RobustBench's from ingestion, the demo's from training) and the forms ``filterdb add`` accepts.

It lives with the CLI, in the top layer, because it gathers sources from both layers below it.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from filterdb.errors import FilterDBError
from filterdb.sources import Leaderboard, select_specs
from filterdb.sources.base import ModelSpec

SOURCE_MODULES = ("filterdb.training.demo", "filterdb.sources.robustbench")
FORMS = ("PATH.pt (a filterdb training checkpoint)", "timm:NAME (e.g. timm:resnet50)",
         "torchvision:NAME (e.g. torchvision:resnet50)",
         "robustbench:DATASET/THREAT/NAME (the published weights, e.g. robustbench:cifar10/Linf/Standard)")


def leaderboards() -> dict[str, Leaderboard]:
    found: dict[str, Leaderboard] = {}
    for module_name in SOURCE_MODULES:
        found.update(importlib.import_module(module_name).LEADERBOARDS)
    return found


def leaderboard_specs(name: str, patterns: tuple[str, ...] = (), **options) -> list[ModelSpec]:
    """The specs of a leaderboard, optionally only the models whose name matches a pattern (glob)."""
    boards = leaderboards()
    if name not in boards:
        raise FilterDBError(f"unknown leaderboard {name!r}; valid: {', '.join(sorted(boards))}")
    specs = boards[name].specs(**options)
    return select_specs(specs, patterns, where=f"leaderboard {name}")


def spec_for_argument(arg: str, *, offline: bool = False) -> ModelSpec:
    """The model an argument of ``filterdb add`` names: a checkpoint file, ``timm:NAME``,
    ``torchvision:NAME`` or ``robustbench:DATASET/THREAT/NAME`` (published weights, as the
    leaderboards build them; in a training model string the same id names only the architecture)."""
    from filterdb.sources.pretrained import LIBRARIES, pretrained_spec

    if Path(arg).is_file():
        from filterdb.training.checkpoint_source import checkpoint_spec
        return checkpoint_spec(Path(arg))
    library, sep, name = arg.partition(":")
    if sep and library in LIBRARIES:
        return pretrained_spec(library, name)
    if sep and library == "robustbench":
        from filterdb.sources.robustbench import spec_for_id
        return spec_for_id(name, offline=offline)
    raise FilterDBError(f"cannot add {arg!r}: not an existing file nor a known form; accepted: {'; '.join(FORMS)}")
