"""The one exception type a user sees: its message is a single sentence saying what to do."""


class TTAError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code = 2


class UsageError(TTAError):
    """Bad input: a missing path, an unknown name, a bundle that does not fit (exit code 2)."""
