from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tta_cli.errors import UsageError
from tta_cli.objectives import OBJECTIVES, Entropy, FeatureAlignment, entropy
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


def test_alignment_weighs_and_chooses_the_layers_its_options_name() -> None:
    stats = {name: (torch.zeros(2), torch.ones(2)) for name in ("stem", "middle", "last")}
    bundle = SimpleNamespace(source_stats=stats)
    chosen = OBJECTIVES["alignment"](bundle, weight=1.6, layers=(2, 0))
    assert chosen.weight == 1.6 and list(chosen.source_stats) == ["stem", "last"]  # the bundle's order
    default = OBJECTIVES["alignment"](bundle)
    assert default.weight == 0.4 and list(default.source_stats) == ["stem", "middle", "last"]
    features = {name: torch.full((2, 2), 2.0) for name in stats}  # per layer ‖μ − 0‖² = 8, ‖σ − 1‖² = 2
    assert abs(chosen(torch.zeros(2, 3), features, batch_of(2)).item() - 1.6 * 10) < 1e-3
    for wrong in ((3,), (-1,), ()):
        with pytest.raises(UsageError, match=r"3 feature layers .*number them 1 to 3 in \+featuresDIGITS"):
            OBJECTIVES["alignment"](bundle, layers=wrong)
