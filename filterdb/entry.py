"""The ``filterdb`` console script: the CLI, with Ctrl-C at any moment (even while the
command's modules load) ending in one line and exit code 130."""
from __future__ import annotations

import os
import signal
import sys

_IMPORT_MACHINERY = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")


def _interrupt(signum, frame) -> None:
    """SIGINT: exit at once while a module is being imported, else raise KeyboardInterrupt as usual.

    A KeyboardInterrupt raised inside an import reaches code that cannot take it: the import
    machinery's weakref callbacks swallow it ("Exception ignored", and the command then runs to
    the end with exit code 0), and torch's C++ start-up aborts on it (exit code -6). Nothing is
    written while modules load, so leaving then is safe; outside imports the command's own
    handlers clean up as they would for any KeyboardInterrupt."""
    while frame is not None:
        if frame.f_code.co_filename in _IMPORT_MACHINERY:
            os.write(2, b"interrupted\n")
            os._exit(130)
        frame = frame.f_back
    raise KeyboardInterrupt


def main() -> None:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the parent ignores SIGINT
        signal.signal(signal.SIGINT, _interrupt)
    try:
        from filterdb.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
