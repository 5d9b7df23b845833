"""Progress in a log: plain, whole lines with counts, rate and ETA (rich's bar on a terminal only)."""
from __future__ import annotations

import io
import re

from rich.console import Console
from rich.progress import Progress

from filterdb.progress import LineProgress, progress_bar


def test_a_log_gets_one_whole_line_per_step():
    out = io.StringIO()
    with LineProgress("models", stream=out, step_interval=0) as bar:
        task = bar.add_task("build", total=4, status="")
        for name in ("a", "b", "c", "d"):
            bar.update(task, status=f"model {name}")
            bar.advance(task)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert re.fullmatch(r"build: 1/4 \(25%\), 0:00:00 elapsed, eta 0:00:00, [\d.]+ models/s \| model a", lines[0])
    assert lines[-1].startswith("build: 4/4 (100%)") and lines[-1].endswith("| model d")


def test_steps_faster_than_the_step_interval_get_their_first_and_last_line():
    out = io.StringIO()
    with LineProgress("models", stream=out, step_interval=3600) as bar:
        task = bar.add_task("metrics", total=1000, status="")
        for _ in range(1000):
            bar.advance(task)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["metrics: 1/1000 (0%)", "metrics: 1000/1000 (100%)"]


def test_fine_grained_tasks_are_throttled_and_phases_logged():
    out = io.StringIO()
    with LineProgress("batches", stream=out, interval=3600) as bar:
        epochs = bar.add_task("cnn4-16 pgd", total=2, status="", unit="epochs")
        for epoch in range(2):
            batches = bar.add_task(f"epoch {epoch + 1}/2", total=100, status="", unit="batches", detail=True)
            for _ in range(100):
                bar.update(batches, advance=1, status="loss 0.1")
            bar.remove_task(batches)
            bar.update(epochs, advance=1, status="acc 90%")
        attack = bar.add_task("evaluate", total=10, status="", detail=True)
        bar.update(attack, advance=5, phase="pgd Linf 0.1")
        bar.update(attack, advance=5, phase="pgd Linf 0.1")  # same phase, interval not reached: no line
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["cnn4-16 pgd", "cnn4-16 pgd", "evaluate"]
    assert "epochs/" in lines[0] and lines[1].startswith("cnn4-16 pgd: 2/2 (100%)")


def test_progress_bar_is_rich_on_a_terminal_and_lines_otherwise():
    assert isinstance(progress_bar("models", console=Console(file=io.StringIO(), force_terminal=True)), Progress)
    assert isinstance(progress_bar("models", console=Console(file=io.StringIO())), LineProgress)
