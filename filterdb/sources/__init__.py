"""Sources of models and the leaderboards they offer to ``filterdb build --leaderboard NAME``.

Each source module exposes ``LEADERBOARDS``: a dict of name -> ``Leaderboard``. A
leaderboard lists ``ModelSpec``s (cheap, no weights loaded); the build loads each.
``filterdb.cli.catalog`` gathers the leaderboards of every layer (the demo's is training's).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from filterdb.errors import FilterDBError
from filterdb.sources.base import LoadedModel, ModelSpec


@dataclass(frozen=True)
class Leaderboard:
    name: str
    description: str
    specs: Callable[..., list[ModelSpec]]  # keyword options from the CLI (offline, model_dir, ...)


def select_specs(specs: list[ModelSpec], patterns: tuple[str, ...], where: str) -> list[ModelSpec]:
    if not patterns:
        return specs
    chosen = [s for s in specs if any(fnmatch.fnmatchcase(s.name.rsplit("/", 1)[-1], p)
                                      or fnmatch.fnmatchcase(s.name, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(s.name.rsplit("/", 1)[-1], p)
                                                or fnmatch.fnmatchcase(s.name, p) for s in specs)]
    if unmatched:
        names = ", ".join(s.name.rsplit("/", 1)[-1] for s in specs[:12])
        more = f" and {len(specs) - 12} more ('filterdb leaderboards' lists them)" if len(specs) > 12 else ""
        raise FilterDBError(f"no model in {where} matches {', '.join(map(repr, unmatched))}; models: {names}{more}")
    return chosen


__all__ = ["Leaderboard", "LoadedModel", "ModelSpec", "select_specs"]
