"""Format versions in one form, ``"MAJOR.MINOR"``, and the rule every reader applies to them.

A reader knows the newest version it reads: an older or equal one is read, a newer one is refused
with one line that says to upgrade filterdb. The integer versions written before this form was
settled (``format_version`` 1 of checkpoints and evaluation files) read as ``"1.0"``.
"""
from __future__ import annotations

from filterdb.errors import FilterDBError

# The filterdb release: the one place it is written. pyproject.toml reads it ([tool.setuptools.dynamic]),
# the package shows it as ``filterdb.__version__``, and every file filterdb writes records it (``tool_version``).
TOOL_VERSION = "0.1.0"


def parse_version(value) -> tuple[int, int]:
    """``"2.0"`` -> (2, 0); an integer n -> (n, 0); a third part (anndata's ``"0.2.0"``) is not
    compared; ValueError for anything else."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return int(value), 0
    parts = str(value).split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def check_readable(found, newest: str, what: str) -> tuple[int, int]:
    """The version ``found`` of ``what`` (a file and its kind, e.g. "run/last.pt: checkpoint format")
    if this filterdb reads it (at most ``newest``); FilterDBError naming both otherwise."""
    try:
        version = parse_version(found)
    except ValueError:
        raise FilterDBError(f"{what} version {found!r} is not a version (MAJOR.MINOR); the file is damaged "
                            "or not written by filterdb") from None
    if version > parse_version(newest):
        raise FilterDBError(f"{what} version {found} is newer than this filterdb reads ({newest}); "
                            "upgrade filterdb (pip install -U filterdb)")
    return version
