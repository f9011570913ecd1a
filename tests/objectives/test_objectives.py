from __future__ import annotations

import math

import torch

from tta_cli.objectives import Entropy, FeatureAlignment, entropy
from tta_cli.streams import Batch


def batch_of(n: int) -> Batch:
    return Batch([str(i) for i in range(n)], torch.zeros(n, 3, 4, 4), torch.full((n,), -1))


def test_entropy_of_uniform_and_certain_predictions() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    values = entropy(logits)
    assert values[0].item() == math.log(4) or abs(values[0].item() - math.log(4)) < 1e-6
    assert values[1].item() < 1e-6
    assert abs(Entropy()(logits, {}, batch_of(2)).item() - math.log(4) / 2) < 1e-6


def test_alignment_is_zero_at_the_source_statistics_and_matches_the_formula() -> None:
    features = {"a": torch.tensor([[1.0, 2.0], [3.0, 6.0]])}  # mean (2, 4), population std (1, 2)
    at_source = FeatureAlignment({"a": (torch.tensor([2.0, 4.0]), torch.tensor([1.0, 2.0]))}, weight=0.4)
    assert at_source(torch.zeros(2, 3), features, batch_of(2)).item() < 1e-6
    shifted = FeatureAlignment({"a": (torch.tensor([0.0, 4.0]), torch.tensor([1.0, 0.0]))}, weight=0.4)
    # ‖σ − σ_src‖² = 4, ‖μ − μ_src‖² = 4; one layer; λ = 0.4.
    assert abs(shifted(torch.zeros(2, 3), features, batch_of(2)).item() - 0.4 * 8) < 1e-5


def test_alignment_is_defined_for_a_batch_of_one() -> None:
    stats = {"a": (torch.zeros(2), torch.ones(2))}
    value = FeatureAlignment(stats)(torch.zeros(1, 3), {"a": torch.ones(1, 2)}, batch_of(1))
    assert torch.isfinite(value)
