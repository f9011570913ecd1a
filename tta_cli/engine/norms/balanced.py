"""The "balanced" normalisation: robust BN whose rate follows how many classes recent inputs
hold, judged by the model's own predictions.

A window of recent predictions spread over the classes says the batches are a fair sample of
the domain, and their statistics can be trusted almost as test-batch BN trusts them; a window
of one or two classes (a sorted folder, a camera on one scene) says the opposite, and the rate
falls to RoTTA's 0.05. With ``h`` the entropy of the window's class histogram over ``log C``:
``rate = 0.05 + 0.45 · max(0, (h − 0.5) / 0.5)²``.

The first batches are averaged in at least at ``1 / (batches_seen + 2)``, as a running mean in
which the source's statistics count as one batch: under a strong shift the source model
predicts one or two classes, which alone would keep the rate at its slowest for good.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tta_cli.config import WeightedNormConfig
from tta_cli.engine.norms.base import Norm, Prediction
from tta_cli.engine.norms.layers import batch_norm_layers, robust_forward, set_rate
from tta_cli.models.typicality import Typicality

RATES = (0.05, 0.5)
"""The slowest and the fastest rate."""
WINDOW = 64
"""Recent predictions whose class spread sets the rate."""


def balanced_rate(predictions: list[int], num_classes: int, batches_seen: int = 0) -> float:
    """The smoothing rate for a window of recent predictions (the module docstring's rule)."""
    slow, fast = RATES
    warm = 1 / (batches_seen + 2)
    if not predictions or num_classes < 2:
        return max(slow, warm)
    counts = torch.bincount(torch.tensor(predictions), minlength=num_classes).float()
    share = counts[counts > 0] / counts.sum()
    spread = float(-(share * share.log()).sum()) / math.log(num_classes)
    return max(slow + (fast - slow) * max(0.0, (spread - 0.5) / 0.5) ** 2, warm)


class BalancedNorm(Norm):
    name = "balanced"
    layer_forward = robust_forward

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__(model)
        self.num_classes = num_classes
        self.recent: deque[int] = deque(maxlen=WINDOW)
        self.batches_seen = 0
        self.rated = list(self.layers)
        """The layers whose rate it sets: the model's and the guard's reference's."""

    @classmethod
    def create(
        cls, model: nn.Module, num_classes: int, weighted_norm: WeightedNormConfig, typicality: Typicality | None
    ) -> BalancedNorm:
        return cls(model, num_classes)

    def attach_reference(self, reference: nn.Module) -> None:
        super().attach_reference(reference)
        self.rated += batch_norm_layers(reference)

    def predict(self, forward: Callable[[], torch.Tensor], look_again: Callable[[], torch.Tensor]) -> Prediction:
        set_rate(self.rated, balanced_rate(list(self.recent), self.num_classes, self.batches_seen))
        self.batches_seen += 1
        logits = forward()
        self.recent.extend(logits.detach().softmax(dim=1).argmax(dim=1).tolist())
        return Prediction(logits)

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "batches_seen": self.batches_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent.clear()
        self.recent.extend(state.get("recent", []))
        self.batches_seen = state.get("batches_seen", 0)
