"""The adaptation engine: methods as presets, the adapter's step, and the run loop."""

from tta_cli.engine.adapter import Adapter, StepResult
from tta_cli.engine.build import build_adapter, resolve_method
from tta_cli.engine.device import resolve_device
from tta_cli.engine.methods import METHODS, Method, get_method
from tta_cli.engine.run import Progress, adapt, open_run_source, resume
from tta_cli.engine.session import Session

__all__ = [
    "METHODS",
    "Adapter",
    "Method",
    "Progress",
    "Session",
    "StepResult",
    "adapt",
    "build_adapter",
    "get_method",
    "open_run_source",
    "resolve_device",
    "resolve_method",
    "resume",
]
