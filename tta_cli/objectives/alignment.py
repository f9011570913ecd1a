"""Feature-statistics alignment to the clean source (MGTTA, Deng et al., AAAI 2025, eq. 4):

    L_align = λ · Σ_l ( ‖σ_l(x) − σ_l^src‖² + ‖μ_l(x) − μ_l^src‖² ) / n_layers

``μ_l, σ_l`` are the mean and standard deviation over the batch of layer l's pooled features;
the source values come from the bundle's ``source_stats.safetensors``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tta_cli.errors import UsageError
from tta_cli.objectives.base import Stateless
from tta_cli.streams import Batch


class FeatureAlignment(Stateless):
    name = "alignment"

    def __init__(self, source_stats: dict[str, tuple[torch.Tensor, torch.Tensor]], weight: float = 0.4) -> None:
        self.source_stats = source_stats
        self.weight = weight

    def __call__(
        self, logits: torch.Tensor, features: dict[str, torch.Tensor], batch: Batch, revisit: bool = False
    ) -> torch.Tensor:
        total = logits.new_zeros(())
        for layer, (source_mean, source_std) in self.source_stats.items():
            values = features[layer]
            # Population statistics: defined for a batch of one, as edge devices may send.
            mean, variance = _moments(values, batch.weights)
            std = variance.add(1e-8).sqrt()
            total = total + (std - source_std.to(std)).pow(2).sum() + (mean - source_mean.to(mean)).pow(2).sum()
        return self.weight * total / len(self.source_stats)


def of_layers(
    source_stats: dict[str, tuple[torch.Tensor, torch.Tensor]], positions: Sequence[int]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The source statistics of the feature layers at ``positions`` (0: the first of the bundle's
    ``feature_layers``), in the bundle's order, for aligning some of the layers only."""
    layers = list(source_stats)
    if not positions or min(positions) < 0 or max(positions) >= len(layers):
        raise UsageError(
            f"The bundle has {len(layers)} feature layers ({', '.join(layers)}); "
            f"number them 1 to {len(layers)} in +featuresDIGITS."
        )
    return {layers[position]: source_stats[layers[position]] for position in sorted(set(positions))}


def _moments(values: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and population variance over the batch, weighted when ``weights`` are given."""
    if weights is None:
        return values.mean(dim=0), values.var(dim=0, correction=0)
    shares = (weights / weights.sum())[:, None]
    mean = (shares * values).sum(dim=0)
    return mean, (shares * (values - mean).pow(2)).sum(dim=0)
