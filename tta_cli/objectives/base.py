"""The interface every objective follows."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from tta_cli.streams import Batch


class Objective(Protocol):
    """A label-free loss on the model's outputs for one batch.

    ``revisit`` is true when an update rule evaluates the same batch again at other parameters
    (SAM's second pass): an objective that selects samples or keeps running statistics then
    reuses its first-pass selection and leaves its statistics alone. ``None`` means that the
    batch holds nothing to learn from, and the engine skips the update.
    """

    name: str

    def __call__(
        self, logits: torch.Tensor, features: dict[str, torch.Tensor], batch: Batch, revisit: bool = False
    ) -> torch.Tensor | None: ...

    def state_dict(self) -> dict[str, Any]:
        """What it carries from batch to batch (part of every snapshot)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; an empty dict starts afresh."""
        ...


def sample_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-sample ``values``, weighted by ``weights`` when given.

    >>> sample_mean(torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])).item()
    1.5
    """
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum()


class Stateless:
    """An objective that carries nothing from one batch to the next."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
