"""The ``filterdb`` console script: the CLI, with Ctrl-C at any moment (even while the
command's modules load) ending in one line and exit code 130."""
from __future__ import annotations

import sys


def main() -> None:
    try:
        from filterdb.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
