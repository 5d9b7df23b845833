"""The one exception type that the CLI turns into a one-line error and exit code 1."""


class FilterDBError(Exception):
    """A user-facing error: its message names the culprit (file, model, layer) and what to do."""
