"""Which Python files this machine trusts to build a bundle's model.

A bundle whose ``model.toml`` names ``path/to/file.py:factory`` runs that file when it is
loaded, as a pickle checkpoint would run code. A bundle copied from elsewhere must not run code
because it was opened, so loading one runs its file only when the user has trusted exactly that
content here: ``tta-cli prepare`` trusts the file it was given (the user named it), and ``tta-cli
trust BUNDLE`` trusts a bundle's file after the user has read it. A file edited since is a
different file and must be trusted again.

The record is one file per trusted SHA-256 in ``$TTA_CLI_CONFIG/trusted-code`` (default
``$XDG_CONFIG_HOME/tta-cli``, ``~/.config/tta-cli``), holding the path it was trusted at:
adding one is a single create, so two processes never lose each other's. What is trusted is
the file's content alone: a file that reads or imports others beside it extends its trust to
them, so a bundle's file should be self-contained. Architectures named by module
(``package.module:factory``) import code the user installed, never one in the bundle's folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tta_cli.errors import UsageError
from tta_cli.files import file_sha256, write_atomic


def trust_folder() -> Path:
    """``$TTA_CLI_CONFIG`` if set, else ``$XDG_CONFIG_HOME/tta-cli`` (``~/.config/tta-cli``), plus ``trusted-code``."""
    if configured := os.environ.get("TTA_CLI_CONFIG"):
        return Path(configured) / "trusted-code"
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "tta-cli" / "trusted-code"


def is_trusted(source: bytes) -> bool:
    """Whether this content was trusted here (the caller then runs exactly these bytes)."""
    return (trust_folder() / hashlib.sha256(source).hexdigest()).is_file()


def trust(path: Path) -> str:
    """Trust ``path``'s present content; returns its SHA-256."""
    digest = file_sha256(Path(path))
    folder = trust_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / digest, f"{Path(path).resolve()}\n")
    except OSError as error:
        raise UsageError(
            f"Cannot record that {path} is trusted in {folder} ({error.strerror}); set TTA_CLI_CONFIG to a "
            "writable folder."
        ) from error
    return digest
