"""Progress bars for long work: counts, rates and elapsed time (rich)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second (or per minute when slow), from rich's own speed estimate."""

    def __init__(self, unit: str = "it"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text(f"-- {self.unit}/s")
        if speed < 1:
            return Text(f"{speed * 60:.1f} {self.unit}/min")
        return Text(f"{speed:.1f} {self.unit}/s")


def progress_bar(unit: str = "it", transient: bool = False) -> Progress:
    """A rich Progress: description, bar, done/total, percent, elapsed, eta, rate, and a free
    ``status`` field (``progress.add_task(desc, total=n, status="")``). Use as a context manager."""
    # On stderr: stdout carries the results (tables, CSV, JSON). Piped or logged, the bar is
    # drawn once at the end, at a width that keeps its columns whole.
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=160)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                    TaskProgressColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    RateColumn(unit), TextColumn("{task.fields[status]}"), transient=transient, console=console)
