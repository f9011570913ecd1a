"""The interface every objective follows."""

from __future__ import annotations

from typing import Protocol

import torch

from tta_cli.streams import Batch


class Objective(Protocol):
    """A label-free loss on the model's outputs for one batch."""

    name: str

    def __call__(self, logits: torch.Tensor, features: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor: ...
