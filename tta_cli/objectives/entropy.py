"""Prediction entropy, the objective of Tent (Wang et al., ICLR 2021, eq. 2)."""

from __future__ import annotations

import torch

from tta_cli.objectives.base import Stateless, sample_mean
from tta_cli.streams import Batch


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy ``H(p) = −Σ_c p_c log p_c`` of ``softmax(logits)``, in nats.

    >>> round(entropy(torch.zeros(1, 4)).item(), 4)  # uniform over 4 classes: ln 4
    1.3863
    """
    log_probs = logits.log_softmax(dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1)


class Entropy(Stateless):
    """Mean prediction entropy over the batch (weighted by the batch's weights, if any)."""

    name = "entropy"

    def __call__(
        self, logits: torch.Tensor, features: dict[str, torch.Tensor], batch: Batch, revisit: bool = False
    ) -> torch.Tensor:
        return sample_mean(entropy(logits), batch.weights)
