"""Reading weight files: safetensors always, pickle only when the user trusts the file."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tta_cli.errors import UsageError

PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".tar"}


def read_tensors(path: Path, remedy: str) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file at ``path``; a damaged or foreign file is one
    sentence that ends with ``remedy``."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise UsageError(f"{path} is not a readable safetensors file ({error}); {remedy}.") from error


def load_state_dict(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or, with ``trust_pickle``, a torch pickle.

    Pickle files can run arbitrary code when loaded, so they are refused unless the user
    says the file is trusted. Wrapped checkpoints (``{"state_dict": ...}``, ``{"model": ...}``)
    and DataParallel's ``module.`` prefix are unwrapped.
    """
    if not path.is_file():
        raise UsageError(f"Weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        return read_tensors(path, "check that it was copied whole")
    if path.suffix not in PICKLE_SUFFIXES:
        raise UsageError(f"Weights file {path} is neither .safetensors nor a torch checkpoint (.pt/.pth).")
    if not trust_pickle:
        raise UsageError(
            f"{path} is a pickle checkpoint, which can run code when loaded; "
            "convert it to .safetensors or pass --trust-pickle if you trust its origin."
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if isinstance(checkpoint, torch.nn.Module):
        checkpoint = checkpoint.state_dict()
    if not isinstance(checkpoint, dict):
        raise UsageError(f"{path} holds a {type(checkpoint).__name__}, not a state dict.")
    return {key.removeprefix("module."): value for key, value in checkpoint.items() if torch.is_tensor(value)}
