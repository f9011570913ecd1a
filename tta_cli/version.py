"""The version of tta-cli (read by the build backend, the CLI and the files it writes)."""

__version__ = "0.1.0"
