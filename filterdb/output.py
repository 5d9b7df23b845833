"""Results as a table on the terminal, or as CSV / JSON on request: one place for every command."""
from __future__ import annotations

import json
import math
import sys

FORMATS = ("table", "csv", "json")
RICH_ROWS = 200  # longer tables are written as plain aligned text: rich draws about 3 ms per row


def _cell(value) -> str:
    import numpy as np

    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def _jsonable(value):
    import numpy as np

    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def emit(frame, fmt: str = "table", title: str | None = None, file=None) -> None:
    """Print ``frame`` (a pandas DataFrame) as a table (rich's, or plain text beyond RICH_ROWS rows),
    CSV or JSON records (NaN becomes null)."""
    file = file or sys.stdout
    if fmt == "csv":
        frame.to_csv(file, index=False)
    elif fmt == "json":
        records = [{k: _jsonable(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
        json.dump(records, file, indent=2)
        file.write("\n")
    elif fmt == "table" and len(frame) > RICH_ROWS:
        plain_table(frame, title, file)
    elif fmt == "table":
        import pandas as pd  # the imports of output are paid only by commands that print a table
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_lines=False)
        for col in frame.columns:
            numeric = pd.api.types.is_numeric_dtype(frame[col])
            # Cells wrap ("fold") rather than lose their ends: a cut model name is useless.
            table.add_column(str(col), justify="right" if numeric else "left", overflow="fold")
        for row in frame.itertuples(index=False):
            table.add_row(*(_cell(v) for v in row))
        console = Console(file=file)
        # Piped or captured output is never wrapped to a guessed terminal width.
        width = console.width if console.is_terminal else 400
        Console(file=file, width=max(120, width)).print(table)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def plain_table(frame, title: str | None = None, file=None) -> None:
    """``frame`` as plain text: a header, a rule, one line per row, columns aligned (numbers to the
    right), cells whole (never cut); what a long table is written as (see RICH_ROWS)."""
    import pandas as pd

    file = file or sys.stdout
    columns = [[str(c), *(_cell(v) for v in frame[c])] for c in frame.columns]
    widths = [max(len(cell) for cell in cells) for cells in columns]
    right = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    lines = [] if title is None else [title]
    for i in range(len(frame) + 1):
        cells = [col[i].rjust(w) if r else col[i].ljust(w) for col, w, r in zip(columns, widths, right)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    file.write("\n".join(lines) + "\n")
