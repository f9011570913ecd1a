"""Harmonizing on one step in N: the weights of the last harmonization carried to the steps between.

Every harmonizer here returns ``w @ G``, a weighting of the K per-loss gradients, and with the
weights held fixed that is the gradient of the weighted loss ``Σ w_k·L_k``: one backward pass
instead of K. What a harmonization costs is the K − 1 extra backward passes that give it the
gradients to compare (on the sample models each is 0.7 of a forward pass, and the second one
makes a harmonized step 1.39-1.46 × Tent's: docs/bench/speed). The objectives' conflict changes
slowly along a stream (their cosine moves over tens of steps, not from one to the next), so
weights measured on one step serve the next. ``every = 2`` halves the extra cost; ``every = 1``
is the plain harmonizer.
"""

from __future__ import annotations

from typing import Any

import torch

from tta_cli.harmonize.base import Harmonized, Harmonizer


class Amortized(Harmonizer):
    """``inner`` harmonizes on the first step and then on one step in ``every``; on the others,
    ``reuse`` hands the adapter the weights to apply to the losses.

    >>> from tta_cli.harmonize.gh import GH
    >>> harmonizer = Amortized(GH(), every=2)
    >>> harmonizer.reuse() is None  # the first step harmonizes
    True
    >>> harmonizer(torch.tensor([[1.0, 0.0], [-1.0, 1.0]])).weights.tolist()
    [2.0, 1.5]
    >>> harmonizer.reuse().tolist(), harmonizer.reuse()
    ([2.0, 1.5], None)
    """

    weights: torch.Tensor | None
    """The last harmonization's weights; ``None`` before the first."""
    since_harmonized: int

    def __init__(self, inner: Harmonizer, every: int) -> None:
        if every < 1:
            raise ValueError(f"harmonize every N steps needs N ≥ 1, got {every}")
        self.inner, self.every = inner, every
        self.name = f"{inner.name} every {every} steps"
        self.reset()

    def reuse(self) -> torch.Tensor | None:
        """Called once per step, before any gradient: the weights this step applies to its losses,
        or ``None`` when it harmonizes (then it calls the harmonizer with the per-loss gradients)."""
        if self.weights is None or self.since_harmonized + 1 >= self.every:
            return None
        self.since_harmonized += 1
        return self.weights

    def __call__(self, gradients: torch.Tensor) -> Harmonized:
        harmonized = self.inner(gradients)
        self.weights, self.since_harmonized = harmonized.weights.detach().clone(), 0
        return harmonized

    def reset(self) -> None:
        self.inner.reset()
        self.weights = None
        self.since_harmonized = 0

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "weights": self.weights, "since_harmonized": self.since_harmonized}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
        self.weights = state.get("weights")
        self.since_harmonized = state.get("since_harmonized", 0)
