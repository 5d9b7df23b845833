"""What ``filterdb demo`` prints: its finding on one screen (robust vs normal with the paired test,
then the normal-vs-normal baseline), and the commands that show the rest."""
from __future__ import annotations

import shlex

import pandas as pd

from filterdb.analysis.compare import (
    DEFAULT_KERNEL,
    PERMUTATIONS,
    Comparison,
    baseline_halves,
    compare_groups,
    group_label,
)
from filterdb.output import emit, say


def print_demo_comparison(db_path, fmt: str = "table", permutations: int = PERMUTATIONS, file=None
                          ) -> tuple[Comparison, Comparison]:
    """Robust vs normal on the first 3x3 layer (unpaired, paired and permutation statistics over
    the demo's matched pairs), then the normal-vs-normal baseline (two halves of the seeds)."""
    from filterdb.analysis.rendering import emit_headline
    result = compare_groups(db_path, "robust", "normal", layer="first", kernel=DEFAULT_KERNEL,
                            permutations=permutations, progress=fmt == "table")
    half_a, half_b = baseline_halves(db_path, "normal")
    baseline = compare_groups(db_path, half_a, half_b, layer="first", kernel=DEFAULT_KERNEL,
                              permutations=permutations, paired_by=None, progress=fmt == "table")
    if fmt != "table":
        emit(pd.concat([result.to_frame().assign(comparison="robust vs normal"),
                        baseline.to_frame().assign(comparison="normal vs normal (baseline)")], ignore_index=True),
             fmt, file=file)
        return result, baseline
    emit_headline(result, file=file)
    say("\nBaseline: normal vs normal, two halves by seed: what models trained alike give", file=file)
    emit_headline(baseline, file=file, labels=(group_label(half_a), group_label(half_b)), legend=False)
    say(more_commands(db_path), file=file)
    return result, baseline


def more_commands(db_path) -> str:
    """The commands that show everything the headline leaves out."""
    db = shlex.quote(str(db_path))
    lines = ["\nMore: every depth and the pairs; one HTML file to share; the models and their pairs:",
             f"  filterdb compare robust normal --layer deciles --db {db}",
             f"  filterdb report robust normal -o report.html --db {db}",
             f"  filterdb info --db {db}",
             f"  filterdb pairs --db {db}"]
    return "\n".join(lines)
