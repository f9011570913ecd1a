"""EATA's sample selection, weighting and Fisher regulariser, against numbers worked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.engine.test_adapter import first_batch, make_adapter
from tta_cli.events import Event, EventKind
from tta_cli.objectives import FisherRegulariser, ReliableEntropy, measure_fisher
from tta_cli.streams import Batch

E0 = 0.4 * math.log(4)  # 0.5545 nats for C = 4

# Probability vectors over C = 4 classes; logits = log p reproduce them exactly.
CONFIDENT_0 = [0.97, 0.01, 0.01, 0.01]  # H = 0.1677 < E0: reliable
CONFIDENT_1 = [0.01, 0.97, 0.01, 0.01]
CONFIDENT_2 = [0.01, 0.01, 0.97, 0.01]
CONFIDENT_3 = [0.02, 0.02, 0.02, 0.94]  # H = 0.2929: reliable
UNIFORM = [0.25, 0.25, 0.25, 0.25]  # H = ln 4 = 1.386 > E0: unreliable
UNWEIGHTED = Batch([], torch.zeros(0), torch.zeros(0))
"""The objective reads only the batch's weights (none here)."""


def logits(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


def entropy_of(p: list[float]) -> float:
    return -sum(value * math.log(value) for value in p)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_entropy_filter_redundancy_filter_and_weights() -> None:
    objective = ReliableEntropy(num_classes=4, margin=0.4, redundancy_margin=0.4, weight_by_certainty=True)
    assert objective.entropy_margin == pytest.approx(E0)
    assert entropy_of(CONFIDENT_0) == pytest.approx(0.1677, abs=1e-4)

    # First batch: no average yet, so every reliable sample is selected; the average starts
    # as their mean probability vector.
    first = logits(CONFIDENT_0, UNIFORM, CONFIDENT_1, CONFIDENT_0)
    assert objective.select(first).tolist() == [True, False, True, True]
    mean = [(a + b + c) / 3 for a, b, c in zip(CONFIDENT_0, CONFIDENT_1, CONFIDENT_0, strict=True)]
    assert mean == pytest.approx([0.65, 0.33, 0.01, 0.01])
    torch.testing.assert_close(objective.mean_probabilities, torch.tensor(mean, dtype=torch.float64))

    # Second batch: class 0 again is redundant (cosine 0.896 ≥ 0.4 with the average), classes 2
    # and 3 are new (cosine 0.028 and 0.043), the uniform one is unreliable.
    assert cosine(CONFIDENT_0, mean) == pytest.approx(0.896, abs=1e-3)
    assert cosine(CONFIDENT_2, mean) == pytest.approx(0.028, abs=1e-3)
    assert cosine(CONFIDENT_3, mean) == pytest.approx(0.043, abs=1e-3)
    second = logits(CONFIDENT_0, CONFIDENT_2, UNIFORM, CONFIDENT_3).requires_grad_(True)
    loss = objective(second, {}, batch=UNWEIGHTED)
    assert objective.selected.tolist() == [False, True, False, True]
    assert objective.reliable_count == 3
    h2, h3 = entropy_of(CONFIDENT_2), entropy_of(CONFIDENT_3)
    weighted = (h2 / math.exp(h2 - E0) + h3 / math.exp(h3 - E0)) / 2  # weights 1.4723 and 1.2990
    assert loss.item() == pytest.approx(weighted)
    # The average moves by momentum 0.9 towards the mean of the selected samples.
    selected_mean = [(a + b) / 2 for a, b in zip(CONFIDENT_2, CONFIDENT_3, strict=True)]
    expected = [0.9 * m + 0.1 * s for m, s in zip(mean, selected_mean, strict=True)]
    torch.testing.assert_close(objective.mean_probabilities, torch.tensor(expected, dtype=torch.float64))


def test_without_redundancy_filter_or_weights_it_is_sars_reliable_entropy() -> None:
    objective = ReliableEntropy(num_classes=4, margin=0.4)
    loss = objective(logits(CONFIDENT_0, UNIFORM, CONFIDENT_3), {}, batch=UNWEIGHTED)
    assert loss.item() == pytest.approx((entropy_of(CONFIDENT_0) + entropy_of(CONFIDENT_3)) / 2)
    assert objective(logits(UNIFORM, UNIFORM), {}, batch=UNWEIGHTED) is None


def test_revisit_filters_again_among_the_first_selection() -> None:
    """SAR's second pass: sample 1 was unreliable before; sample 0 is unreliable at the new θ."""
    objective = ReliableEntropy(num_classes=4, margin=0.4)
    objective(logits(CONFIDENT_0, UNIFORM, CONFIDENT_3), {}, batch=UNWEIGHTED)
    loss = objective(logits(UNIFORM, CONFIDENT_1, CONFIDENT_2), {}, batch=UNWEIGHTED, revisit=True)
    assert loss.item() == pytest.approx(entropy_of(CONFIDENT_2))
    assert objective.selected.tolist() == [True, False, True]  # the first pass's selection stays


def test_fisher_regulariser_value_and_gradient_for_a_known_shift() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    fisher = {"1.weight": (torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0]))}
    regulariser = FisherRegulariser(model, fisher, weight=2.0)
    assert regulariser(torch.zeros(1, 2), {}, None).item() == pytest.approx(0.0)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.1, 0.8]))  # θ − θ0 = (0.1, −0.2)
    penalty = regulariser(torch.zeros(1, 2), {}, None)
    assert penalty.item() == pytest.approx(2.0 * (2 * 0.01 + 3 * 0.04))  # λ Σ F (θ−θ0)² = 0.28
    (gradient,) = torch.autograd.grad(penalty, model[1].weight)
    torch.testing.assert_close(gradient, torch.tensor([2 * 2.0 * 2 * 0.1, 2 * 2.0 * 3 * -0.2]))


def test_fisher_is_the_mean_over_batches_of_squared_batch_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    params = {"1.weight": model[1].weight, "1.bias": model[1].bias}
    one, two = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)

    def squared_gradient(images: torch.Tensor) -> torch.Tensor:
        output = model(images)
        loss = nn.functional.cross_entropy(output, output.argmax(1))
        return torch.autograd.grad(loss, model[1].weight)[0] ** 2

    fisher = measure_fisher(model, params, [one, two])
    torch.testing.assert_close(fisher["1.weight"][0], (squared_gradient(one) + squared_gradient(two)) / 2)
    torch.testing.assert_close(fisher["1.weight"][1], model[1].weight.detach())
    with pytest.raises(ValueError):
        measure_fisher(model, params, [])


def test_eata_makes_no_update_when_no_sample_is_reliable(bundle_path: Path, clean_folder: Path, tmp_path) -> None:
    adapter = make_adapter(bundle_path, "eata", tmp_path)
    # An untrained 3-class model is never confident: every entropy is above 0.4·ln 3.
    before = torch.cat([p.detach().flatten().clone() for p in adapter.params])
    result = adapter.step(first_batch(clean_folder))
    assert (result.entropy >= 0.4 * math.log(3)).all()
    assert result.events == [Event(EventKind.NO_UPDATE, "reliable-entropy selected no sample")]
    assert result.update_norm == 0
    assert torch.equal(before, torch.cat([p.detach().flatten() for p in adapter.params]))
    assert [objective.name for objective in adapter.objectives] == ["reliable-entropy"]  # no Fisher: ETA
