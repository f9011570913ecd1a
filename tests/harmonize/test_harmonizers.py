"""Harmonizers on small gradients whose results were worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tta_cli.errors import UsageError
from tta_cli.harmonize import GH, HARMONIZERS, SAMGS, GHPlusPlus, conflict_diagnostics, make_harmonizer

OBTUSE = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # 135°


def test_gh_turns_an_obtuse_pair_acute() -> None:
    result = GH()(OBTUSE)
    # d = −1, ‖g1‖² = 1, ‖g2‖² = 2: w1 = 1 + 1 = 2, w2 = 1 + 1/2 = 1.5.
    torch.testing.assert_close(result.weights, torch.tensor([2.0, 1.5]))
    torch.testing.assert_close(result.gradient, torch.tensor([0.5, 1.5]))
    assert torch.dot(result.gradient, OBTUSE[0]) > 0 and torch.dot(result.gradient, OBTUSE[1]) > 0
    # It equals each gradient minus its projection on the other (PCGrad with sum).
    g1, g2 = OBTUSE
    projected = (g1 - g1.dot(g2) / g2.dot(g2) * g2) + (g2 - g1.dot(g2) / g1.dot(g1) * g1)
    torch.testing.assert_close(result.gradient, projected)


def test_gh_and_gh_plus_plus_leave_acute_pairs_alone() -> None:
    acute = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    for harmonizer in (GH(), GHPlusPlus()):
        torch.testing.assert_close(harmonizer(acute).weights, torch.ones(2))


def test_gh_plus_plus_weights_at_180_degrees() -> None:
    weights = GHPlusPlus(k=0.5)(torch.tensor([[2.0, 0.0], [-1.0, 0.0]])).weights
    # β_max = 90°, β = 45°: 1 ± 2·sin(22.5°).
    assert weights[0].item() == pytest.approx(1 + 2 * math.sin(math.radians(22.5)), abs=1e-6)
    assert weights[1].item() == pytest.approx(1 - 2 * math.sin(math.radians(22.5)), abs=1e-6)
    assert weights[0].item() == pytest.approx(1.77, abs=0.01) and weights[1].item() == pytest.approx(0.23, abs=0.01)


def test_gh_plus_plus_at_135_degrees_with_k_1_reaches_a_right_angle_weighting() -> None:
    weights = GHPlusPlus(k=1.0)(OBTUSE).weights
    # β_max = β = 45°: w1 = 1 + 2·sin 22.5°, w2 = 1 + 2·sin 0 = 1.
    torch.testing.assert_close(weights, torch.tensor([1 + 2 * math.sin(math.radians(22.5)), 1.0]))


def test_sam_gs_equalise_branch() -> None:
    result = SAMGS(gamma=0.1)(torch.tensor([[100.0, 0.0], [0.0, 1.0]]))
    # s̄ = 200/10001 < 0.1: (1,0)·50.5 + (0,1)·50.5, times K = 2, clipped to norm 1.
    assert result.diagnostics["modulated"] == 0.0
    torch.testing.assert_close(result.gradient, torch.tensor([1.0, 1.0]) / math.sqrt(2))


def test_sam_gs_momentum_branch_and_reset() -> None:
    harmonizer = SAMGS(gamma=0.1)
    gradients = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    first = harmonizer(gradients)
    # s̄ = 0.8; step 1: M̂_k = g_k, v̂ = 1e-8/0.01 = 1e-6: g = (4, 1)/1e-3, times 2, clipped.
    assert first.diagnostics["modulated"] == 1.0
    torch.testing.assert_close(first.gradient, torch.tensor([4.0, 1.0]) / math.sqrt(17))
    state = {key: value.clone() if torch.is_tensor(value) else value for key, value in harmonizer.state_dict().items()}
    second = harmonizer(torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
    restored = SAMGS(gamma=0.1)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored(torch.tensor([[0.0, 2.0], [1.0, 0.0]])).gradient, second.gradient)
    harmonizer.reset()
    assert harmonizer.steps == 0 and harmonizer.momentum is None
    torch.testing.assert_close(harmonizer(gradients).gradient, first.gradient)


@pytest.mark.parametrize("name", ["pcgrad", "upgrad", "mgda"])
def test_library_aggregators_do_not_conflict_with_either_gradient(name: str) -> None:
    result = make_harmonizer(name)(OBTUSE)
    assert result.weights.shape == (2,)
    torch.testing.assert_close(result.gradient, result.weights @ OBTUSE)
    assert (OBTUSE @ result.gradient >= -1e-6).all()


def test_registry_and_diagnostics() -> None:
    assert set(HARMONIZERS) == {"sum", "gh", "gh++", "sam-gs", "pcgrad", "upgrad", "mgda"}
    with pytest.raises(UsageError, match="Unknown harmonizer"):
        make_harmonizer("average")
    diagnostics = conflict_diagnostics(OBTUSE)
    assert diagnostics["cosine"] == pytest.approx(-1 / math.sqrt(2))
    assert diagnostics["grad_norm_2"] == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="exactly two"):
        GH()(torch.ones(3, 2))
