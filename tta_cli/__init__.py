"""tta-cli: test-time adaptation of deployed image classifiers.

``Session`` (``tta_cli.engine.session``) is the way in for a Python caller with its own loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tta_cli.version import __version__

if TYPE_CHECKING:
    from tta_cli.engine.session import Session

__all__ = ["Session", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the command line starts without torch for --help and --version.
    if name == "Session":
        from tta_cli.engine.session import Session

        return Session
    raise AttributeError(f"module 'tta_cli' has no attribute {name!r}")
