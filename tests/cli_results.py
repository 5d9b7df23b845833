"""Running the real ``filterdb`` CLI in-process, and what a one-line user error must look like."""
from click.testing import CliRunner, Result

from filterdb.cli import main


def run(*args) -> Result:
    """``filterdb ARGS...`` through click's test runner (arguments may be paths or numbers)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result: Result, *names) -> str:
    """The single ``error:`` line of a failed command (exit 1, no traceback), naming each of ``names``."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (OSError, KeyError, TypeError))
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]
