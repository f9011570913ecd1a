"""The interface every harmonizer follows: K gradients in, one gradient and its weights out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Harmonized:
    """``gradient`` is the update direction; ``weights[k]`` is how much of loss k's gradient it
    holds (``‖component along g_k‖ / ‖g_k‖`` where the method is not a plain weighting)."""

    gradient: torch.Tensor
    weights: torch.Tensor
    diagnostics: dict[str, float] = field(default_factory=dict)


class Harmonizer:
    """Stateless by default; stateful harmonizers override the three state methods."""

    name = "harmonizer"

    def __call__(self, gradients: torch.Tensor) -> Harmonized:
        raise NotImplementedError

    def reuse(self) -> torch.Tensor | None:
        """Called once per step before any gradient: weights to apply to this step's losses
        instead of harmonizing their gradients (``Amortized``), or ``None``: harmonize."""
        return None

    def reset(self) -> None:
        """Forget any state (when the adaptation state is reset or rolled back)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (an empty dict restores the reset state)."""


def combine(gradients: torch.Tensor, weights: torch.Tensor, **diagnostics: float) -> Harmonized:
    return Harmonized(weights @ gradients, weights, dict(diagnostics))


def conflict_diagnostics(gradients: torch.Tensor) -> dict[str, float]:
    """cos(g1, g2) and the gradient norms: how a user sees two objectives disagree."""
    norms = gradients.norm(dim=1)
    diagnostics = {f"grad_norm_{k + 1}": norm.item() for k, norm in enumerate(norms)}
    if len(gradients) == 2:
        diagnostics["cosine"] = torch.nn.functional.cosine_similarity(gradients[0], gradients[1], dim=0).item()
    return diagnostics


class Sum(Harmonizer):
    """Plain summation: every loss weighted 1 (what a single ``backward`` of the sum does)."""

    name = "sum"

    def __call__(self, gradients: torch.Tensor) -> Harmonized:
        return combine(gradients, torch.ones(len(gradients), dtype=gradients.dtype, device=gradients.device))
