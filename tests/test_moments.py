"""MGG's features and SAM-GS's momentum share ``tta_cli.moments``; both must keep the numbers
of the formulas they were written with, to the bit."""

from __future__ import annotations

import torch

from tta_cli.harmonize import SAMGS
from tta_cli.mgg import MetaGradientGenerator, MGGRule
from tta_cli.moments import bias_corrected, moving_average


def test_the_moments_are_adams_to_the_bit() -> None:
    torch.manual_seed(0)
    average, scalar = torch.zeros(7), 0.0
    for steps in range(1, 6):
        value = torch.randn(7)
        expected = 0.99 * average + (1 - 0.99) * value
        average = moving_average(average, value, 0.99)
        assert torch.equal(average, expected)
        assert torch.equal(bias_corrected(average, 0.99, steps), average / (1 - 0.99**steps))
        scalar = moving_average(scalar, steps / 7, 0.9)
        assert bias_corrected(scalar, 0.9, steps) == scalar / (1 - 0.9**steps)


def test_mgg_features_keep_their_numbers() -> None:
    torch.manual_seed(1)
    rule = MGGRule(MetaGradientGenerator())
    first, second = torch.zeros(20), torch.zeros(20)
    for steps in range(1, 8):
        gradient = torch.randn(20) * steps
        first = 0.9 * first + (1 - 0.9) * gradient
        second = 0.99 * second + (1 - 0.99) * gradient.square()
        scale = (second / (1 - 0.99**steps)).sqrt() + 1e-8
        expected = torch.stack([gradient / scale, first / (1 - 0.9**steps) / scale], dim=1)
        assert torch.equal(rule.features(gradient), expected)


def test_samgs_keeps_its_numbers() -> None:
    torch.manual_seed(2)
    samgs, momentum, second, branches = SAMGS(), torch.zeros(2, 20), 0.0, set()
    for steps in range(1, 8):
        # The second gradient's size swings, so both branches (equalise, modulate) are taken.
        gradients = torch.randn(2, 20) * torch.tensor([[1.0], [50.0 if steps % 2 else 1.0]])
        harmonized = samgs(gradients)
        similarity = harmonized.diagnostics["similarity"]
        branches.add(harmonized.diagnostics["modulated"])
        momentum = 0.9 * momentum + (1 - 0.9) * gradients
        second = 0.99 * second + (1 - 0.99) * (1 - similarity) ** 2 + 1e-8
        assert torch.equal(samgs.momentum, momentum) and samgs.second_moment == second
        if similarity >= samgs.gamma:
            contributions = gradients * (momentum / (1 - 0.9**steps)).abs() / (second / (1 - 0.99**steps)) ** 0.5
            combined = 2 * contributions.sum(dim=0)
            expected = combined * min(1.0, 1.0 / max(combined.norm().item(), 1e-30))
            assert torch.equal(harmonized.gradient, expected)
    assert branches == {0.0, 1.0}
