"""What every update rule is: ``(θ, g) -> θ'`` with its own state, and a typed word on what it did."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

Closure = Callable[[], "tuple[float, torch.Tensor] | None"]
"""Evaluates the same batch again at the parameters' current values: ``(loss, flat gradient)``,
or ``None`` when the objectives find nothing to learn from there. As with ``closure`` in
``torch.optim``, a rule that needs the loss elsewhere than at θ (SAM) calls it; others ignore it."""


class Outcome(enum.Enum):
    APPLIED = "applied"
    SKIPPED = "skipped"
    """θ did not move (``reason`` says why)."""
    RESET_TO_SOURCE = "reset to the source state"
    """θ and the rule's own state went back to the source's (SAR's recovery); whatever else
    adapts (normalisation statistics) must go back with them."""


@dataclass(frozen=True)
class UpdateOutcome:
    outcome: Outcome = Outcome.APPLIED
    reason: str = ""


APPLIED = UpdateOutcome()


class UpdateRule(Protocol):
    """``(θ, g) -> θ'``: applies a flat gradient to the parameters, keeping its own state."""

    def apply(
        self, params: list[torch.nn.Parameter], gradient: torch.Tensor, closure: Closure | None = None
    ) -> UpdateOutcome: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def split_like(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of a flat vector over θ, one per parameter and shaped like it (the inverse of
    flattening the parameters in order).

    >>> [part.tolist() for part in split_like(torch.arange(5.0), [torch.zeros(2), torch.zeros(1, 3)])]
    [[0.0, 1.0], [[2.0, 3.0, 4.0]]]
    """
    parts = flat.split([param.numel() for param in params])
    return [part.view_as(param) for part, param in zip(parts, params, strict=True)]


def flatten(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat vector of ``tensors`` in order, zeros where one is ``None`` (an unused parameter)."""
    return torch.cat(
        [(t if t is not None else torch.zeros_like(p)).flatten() for t, p in zip(tensors, like, strict=True)]
    )
