"""Results as a table fitted to the terminal, or as CSV / JSON on request: one place for every command."""
from __future__ import annotations

import json
import math
import sys

FORMATS = ("table", "csv", "json")
RICH_ROWS = 200  # longer tables are written as plain aligned text: rich draws about 3 ms per row


def cell_text(value) -> str:
    """A cell as a table shows it: floats to 4 significant digits, NaN as nan."""
    import numpy as np

    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def json_safe(value):
    """``value`` as strict JSON takes it: numpy scalars as Python ones, NaN and infinities as None
    (null), dicts, lists and tuples element by element. Every JSON filterdb writes goes through it."""
    import numpy as np

    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


DEFAULT_WIDTH = 100  # the width of a table written to a file or a pipe when $COLUMNS is not set
SHORTEST_TEXT = 12  # free text (a cell with spaces) may be shortened to this many characters, with an ellipsis
_WIDE = False  # set by --wide (filterdb.cli.options.format_option): every column, whatever the width


def set_wide(wide: bool = True) -> None:
    """Show every column of every table, whatever the width (what ``--wide`` sets)."""
    global _WIDE
    _WIDE = bool(wide)


def table_width(file=None) -> int:
    """The width tables are fitted to: ``$COLUMNS`` when set (as pandas and rich take it), else the
    terminal's when ``file`` is one, else DEFAULT_WIDTH: never unbounded."""
    import os
    import shutil

    file = file or sys.stdout
    columns = os.environ.get("COLUMNS", "")
    if columns.strip().isdigit() and int(columns) > 0:
        return int(columns)
    isatty = getattr(file, "isatty", None)
    if isatty is not None and isatty():
        return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    return DEFAULT_WIDTH


def first_few(items, n: int = 3, sep: str = ", ") -> str:
    """A list inside a message, bounded: ``"a, b, c and 253 more"`` (all of them when at most n + 1)."""
    items = [str(i) for i in items]
    if len(items) <= n + 1:
        return sep.join(items)
    return f"{sep.join(items[:n])} and {len(items) - n} more"


def _is_text(cells: list[str]) -> bool:
    """Free text (three words or more, longer than SHORTEST_TEXT) may be shortened; identifiers,
    numbers and intervals ("[-0.01, 0.02]") never."""
    return any(len(c) > SHORTEST_TEXT and len(c.split()) >= 3 for c in cells)


def say(text: str, file=None) -> None:
    """Print prose wrapped at the table width (:func:`table_width`), between words only: an
    identifier or a path is never broken."""
    import textwrap

    file = file or sys.stdout
    width = table_width(file)
    lines = [textwrap.fill(line, width, break_long_words=False, break_on_hyphens=False) if len(line) > width else line
             for line in text.split("\n")]
    print("\n".join(lines), file=file)


def fit_columns(frame, width: int, priority=None, gap: int = 2, edge: int = 0) -> tuple[list[str], list[str]]:
    """The columns of ``frame`` that fit in ``width`` characters, chosen by ``priority`` (column
    names, most important first; the columns it does not name follow in their order; the first
    column is always kept), in the frame's order; and the hidden ones. Each column takes its longest
    cell or header plus ``gap``; free text counts SHORTEST_TEXT (it is shortened to fit)."""
    names = [str(c) for c in frame.columns]
    cells = {c: [cell_text(v) for v in frame[col]] for c, col in zip(names, frame.columns)}
    need = {}
    for c in names:
        longest = max([len(c), *(len(v) for v in cells[c])])
        need[c] = (min(longest, max(len(c), SHORTEST_TEXT)) if _is_text(cells[c]) else longest) + gap
    order = [c for c in (priority or []) if c in need]
    order = [names[0], *[c for c in order if c != names[0]], *[c for c in names if c not in order and c != names[0]]]
    if _WIDE:
        return names, []
    kept, used = set(), edge
    for c in order:
        if c == names[0] or used + need[c] <= width:
            kept.add(c)
            used += need[c]
    return [c for c in names if c in kept], [c for c in names if c not in kept]


def hidden_line(hidden: list[str], width: int = DEFAULT_WIDTH) -> str:
    """The last line of a table that hid columns, within ``width``: how many, the first few, and how to see them."""
    head = f"{len(hidden)} column{'s' if len(hidden) > 1 else ''} hidden: --wide shows them"
    for n in range(len(hidden), 0, -1):
        line = f"{head} ({first_few(hidden, n)})"
        if len(line) <= width:
            return line
    return head


def emit(frame, fmt: str = "table", title: str | None = None, file=None, priority=None, width: int | None = None) -> None:
    """Print ``frame`` (a pandas DataFrame) as a table fitted to the width (:func:`table_width`), or
    as CSV or JSON records (NaN becomes null; always every column and row).

    A table keeps the columns that fit, most important first (``priority``: column names; else the
    frame's order), and says in a last line which it hid (``--wide`` shows every column). Numbers
    and identifiers are never broken across lines; free text is shortened with an ellipsis. Beyond
    RICH_ROWS rows it is plain aligned text."""
    file = file or sys.stdout
    if fmt == "csv":
        frame.to_csv(file, index=False)
    elif fmt == "json":
        records = json_safe(frame.to_dict(orient="records"))
        json.dump(records, file, indent=2)
        file.write("\n")
    elif fmt == "table":
        width = width or table_width(file)
        plain = len(frame) > RICH_ROWS
        shown, hidden = fit_columns(frame, width, priority)
        frame = frame[[c for c in frame.columns if str(c) in shown]]
        if plain:
            plain_table(frame, title, file)
        else:
            _rich_table(frame, title, file, width)
        if hidden:
            print(hidden_line(hidden, width), file=file)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _rich_table(frame, title: str | None, file, width: int) -> None:
    import pandas as pd  # the imports of output are paid only by commands that print a table
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    names = [str(c) for c in frame.columns]
    cells = [[cell_text(v) for v in frame[c]] for c in frame.columns]
    widths = [max([len(n), *(len(c) for c in col)]) for n, col in zip(names, cells)]
    text = [_is_text(col) for col in cells]
    if not _WIDE and any(text):  # free text shares what the whole columns leave, shortened with an ellipsis
        fixed = sum(w for w, t in zip(widths, text) if not t) + 2 * (len(names) - 1)
        share = max(SHORTEST_TEXT, (width - fixed) // sum(text))
        for i, t in enumerate(text):
            if t and widths[i] > share:
                widths[i] = max(share, len(names[i]))
                cells[i] = [c if len(c) <= widths[i] else c[:widths[i] - 1] + "\u2026" for c in cells[i]]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for name, w in zip(frame.columns, widths):
        numeric = pd.api.types.is_numeric_dtype(frame[name])
        # whole or not shown: fit_columns leaves out what does not fit, and nothing is folded
        table.add_column(str(name), justify="right" if numeric else "left", no_wrap=True, min_width=w)
    for row in zip(*cells):
        table.add_row(*(Text(c) for c in row))
    console = Console(file=file, width=width if not _WIDE else 10 ** 4, highlight=False)
    if title:
        Console(file=file, width=width, highlight=False).print(Text(title))
    console.print(table)


def plain_table(frame, title: str | None = None, file=None) -> None:
    """``frame`` as plain text: a header, a rule, one line per row, columns aligned (numbers to the
    right), cells whole (never cut); what a long table is written as (see RICH_ROWS)."""
    import pandas as pd

    file = file or sys.stdout
    columns = [[str(c), *(cell_text(v) for v in frame[c])] for c in frame.columns]
    widths = [max(len(cell) for cell in cells) for cells in columns]
    right = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    lines = [] if title is None else [title]
    for i in range(len(frame) + 1):
        cells = [col[i].rjust(w) if r else col[i].ljust(w) for col, w, r in zip(columns, widths, right)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    file.write("\n".join(lines) + "\n")
