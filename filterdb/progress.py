"""Progress for long work: a rich bar with counts, rates and ETA on a terminal, plain lines in a log.

``progress_bar()`` returns a context manager with rich's ``Progress`` task API (``add_task``,
``update``, ``advance``, ``remove_task``). On a terminal it is rich's bar. When stderr is not a
terminal (a log file, CI, a cluster job) it is a :class:`LineProgress`: one plain line per
finished step of a task (a model, an epoch, an attack), at most one a ``STEP_INTERVAL`` (steps
that come faster, e.g. 1,000 cached models, get their first and last line), at most one every
``LOG_INTERVAL`` seconds for fine-grained tasks, each line whole::

    models: 3/40 (8%), 0:00:12 elapsed, eta 0:02:28, 15.0 models/min | cnn4-16 pgd

Task fields understood here (rich keeps them in ``task.fields``): ``status`` (free text at the
end of the line), ``unit`` (overrides the bar's unit), ``detail=True`` (a fine-grained task,
e.g. the batches of an epoch: logged only every ``LOG_INTERVAL`` seconds, not per step) and
``phase`` (a change of phase, e.g. the next attack, always gets a line).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

LOG_INTERVAL = 10.0  # seconds between two lines of one fine-grained task in a log
STEP_INTERVAL = 1.0  # seconds between two lines of one coarse task, its first and last step excepted


def format_rate(per_second: float | None, unit: str) -> str:
    """``12.5 models/s``, or per minute below one a second; ``-- unit/s`` when unknown."""
    if not per_second:
        return f"-- {unit}/s"
    if per_second < 1:
        return f"{per_second * 60:.1f} {unit}/min"
    return f"{per_second:.1f} {unit}/s"


class RateColumn(ProgressColumn):
    """Items per second (or per minute when slow), from rich's own speed estimate."""

    def __init__(self, unit: str = "it"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(format_rate(task.finished_speed or task.speed, task.fields.get("unit", self.unit)))


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


@dataclass
class _LineTask:
    description: str
    total: float | None
    completed: float
    visible: bool
    fields: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    logged_at: float = field(default_factory=time.monotonic)
    logged_completed: float = -1.0
    phase: Any = None


class LineProgress:
    """rich's ``Progress`` task API, written as plain lines (for logs): see the module docstring."""

    def __init__(self, unit: str = "it", stream: IO[str] | None = None, interval: float = LOG_INTERVAL,
                 step_interval: float = STEP_INTERVAL):
        self.unit = unit
        self.stream = stream
        self.interval = interval
        self.step_interval = step_interval
        self._tasks: dict[TaskID, _LineTask] = {}
        self._next_id = 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def add_task(self, description: str, total: float | None = 100.0, completed: float = 0, visible: bool = True,
                 start: bool = True, **fields) -> TaskID:
        task_id = TaskID(self._next_id)
        self._next_id += 1
        self._tasks[task_id] = _LineTask(description, total, completed, visible, dict(fields), phase=fields.get("phase"))
        return task_id

    def remove_task(self, task_id: TaskID) -> None:
        self._tasks.pop(task_id, None)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: TaskID, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, visible: bool | None = None,
               refresh: bool = False, **fields) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance:
            task.completed += advance
        if description is not None:
            task.description = description
        if visible is not None:
            task.visible = visible
        task.fields.update(fields)
        new_phase = "phase" in fields and fields["phase"] != task.phase
        task.phase = task.fields.get("phase")
        if task.visible and (advance or completed is not None or new_phase):
            self._maybe_log(task, new_phase)

    def _maybe_log(self, task: _LineTask, new_phase: bool) -> None:
        now = time.monotonic()
        if task.fields.get("detail"):  # fine-grained: a line per phase, else one per interval
            due = new_phase or now - task.logged_at >= self.interval
        else:  # coarse (a model, an epoch): a line per step, unless steps come faster than step_interval
            first, last = task.logged_completed < 0, task.total is not None and task.completed >= task.total
            due = new_phase or (task.completed != task.logged_completed
                                and (first or last or now - task.logged_at >= self.step_interval))
        if due:
            task.logged_at, task.logged_completed = now, task.completed
            print(self.line(task, now), file=self.stream or sys.stderr, flush=True)

    def line(self, task: _LineTask, now: float | None = None) -> str:
        """The plain line describing ``task`` now: counts, percent, elapsed, eta, rate, status."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - task.started, 1e-9)
        unit = task.fields.get("unit", self.unit)
        rate = task.completed / elapsed if task.completed else None
        counts = f"{task.completed:g}/{task.total:g}" if task.total is not None else f"{task.completed:g}"
        parts = [counts]
        if task.total:
            parts[0] += f" ({100 * task.completed / task.total:.0f}%)"
        parts.append(f"{_duration(elapsed)} elapsed")
        if rate and task.total is not None:
            parts.append(f"eta {_duration(max(task.total - task.completed, 0) / rate)}")
        parts.append(format_rate(rate, unit))
        status = str(task.fields.get("status") or "")
        return f"{task.description}: {', '.join(parts)}" + (f" | {status}" if status else "")


def progress_bar(unit: str = "it", transient: bool = False, console: Console | None = None) -> Progress | LineProgress:
    """Progress for long work: description, bar, done/total, percent, elapsed, eta, rate, and a
    free ``status`` field (``progress.add_task(desc, total=n, status="")``); plain lines when
    stderr is not a terminal. Use as a context manager."""
    # On stderr: stdout carries the results (tables, CSV, JSON).
    console = console or Console(stderr=True)
    if not console.is_terminal:
        return LineProgress(unit)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                    TaskProgressColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    RateColumn(unit), TextColumn("{task.fields[status]}"), transient=transient, console=console)
