"""The one place a ``--device`` string becomes a ``torch.device``."""

from __future__ import annotations

import torch

from tta_cli.errors import UsageError


def resolve_device(request: str) -> torch.device:
    """``auto`` picks the first CUDA GPU when there is one, else the CPU."""
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(request)
    except RuntimeError as error:
        raise UsageError(f"Unknown device {request!r}; use auto, cpu, cuda or cuda:N.") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"Device {request!r} was asked for but CUDA is not available here; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"Device {request!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    elif device.type != "cpu":
        raise UsageError(f"Unsupported device {request!r}; use auto, cpu, cuda or cuda:N.")
    return device
