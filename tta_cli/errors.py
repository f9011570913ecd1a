"""The one exception type a user sees, and every status tta-cli exits with.

An error's message is a single sentence saying what to do.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit statuses of ``tta-cli``; README.md lists those of ``adapt``."""

    DONE = 0
    CHECK_FAILED = 1
    """``export``: onnxruntime did not reproduce PyTorch within tolerance."""
    USAGE = 2
    """Bad usage: a missing path, an unknown name, a bundle that does not fit, a path the system refuses."""
    SOURCE_LOST = 3
    """``adapt``: a live source was lost and could not be reconnected."""
    SOURCE_NOT_FINITE = 4
    """``adapt``: the source state itself predicts non-finite values; no state to roll back to helps."""
    SIGINT = 130
    """``adapt``: stopped by SIGINT (Ctrl-C); 128 + the signal's number, as shells report it."""
    SIGTERM = 143
    """``adapt``: stopped by SIGTERM (``docker stop``, systemd)."""


class TTAError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code: int = ExitCode.USAGE


class SourceNotFinite(TTAError):
    """The model as given predicts NaN or infinity on the stream (exit code 4)."""

    exit_code = ExitCode.SOURCE_NOT_FINITE


class UsageError(TTAError):
    """Bad input: a missing path, an unknown name, a bundle that does not fit (exit code 2)."""
