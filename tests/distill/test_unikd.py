"""UNI-KD's parts: gradient reversal, schedules, joint weights, the losses and discriminators."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from torch import nn

from tta_cli.config import DistillKD
from tta_cli.distill import RECIPES
from tta_cli.distill.unikd import (
    FeatureDiscriminator,
    UniKDHeads,
    distillation_loss,
    feature_discriminator_loss,
    grl_coefficient,
    joint_weights,
    kd_weight,
    reverse_gradient,
    unikd_losses,
)
from tta_cli.models import build_architecture
from tta_cli.parallel import AllReducedBatchNorm, _all_reduced


def test_the_gradient_reversal_flips_and_scales_the_gradient() -> None:
    features = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    out = reverse_gradient(features, 0.3)
    assert torch.equal(out, features)
    out.backward(upstream)
    assert features.grad is not None
    torch.testing.assert_close(features.grad, -0.3 * upstream)


def test_the_reversal_coefficient_rises_from_0_to_1() -> None:
    assert grl_coefficient(0.0) == 0.0
    assert grl_coefficient(1.0) == pytest.approx(1.0, abs=1e-4)
    values = [grl_coefficient(step / 20) for step in range(21)]
    assert values == sorted(values) and all(0 <= value < 1 for value in values)


def test_beta_grows_from_0_to_1() -> None:
    assert kd_weight(0.0) == 0.0 and kd_weight(1.0) == 1.0
    values = [kd_weight(step / 10) for step in range(11)]
    assert values == sorted(values)


def test_joint_weights_lie_in_0_1_and_are_detached() -> None:
    logits = torch.cat([torch.randn(64, 2) * 10, torch.tensor([[0.0, 0.0], [50.0, -50.0]])]).requires_grad_(True)
    weights = joint_weights(logits)
    assert weights.shape == (66,) and not weights.requires_grad
    assert bool(((weights >= 0) & (weights <= 1)).all())
    assert weights[-2] == pytest.approx(1.0) and weights[-1] == pytest.approx(0.0, abs=1e-6)


def test_the_kd_loss_falls_over_a_few_steps_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    student = build_architecture("tiny_resnet", 3)
    images, teacher_logits = torch.randn(8, 3, 32, 32), torch.randn(8, 3) * 3
    weights = torch.rand(8)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss = distillation_loss(student(images), teacher_logits, 4.0, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert distillation_loss(teacher_logits, teacher_logits).item() == pytest.approx(0.0, abs=1e-6)


def test_the_feature_discriminator_learns_to_tell_teacher_from_student() -> None:
    torch.manual_seed(0)
    teacher, student = torch.randn(64, 16) + 1.0, torch.randn(64, 16) - 1.0
    discriminator = FeatureDiscriminator(16, hidden=32)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-2)
    accuracies = []
    for _ in range(30):
        loss, accuracy = feature_discriminator_loss(discriminator, teacher, student)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracies.append(accuracy.item())
    assert accuracies[0] < 0.8 and accuracies[-1] > 0.95


def test_the_adversarial_term_trains_the_student_and_kd_reads_target_logits() -> None:
    """The two faults of the public code: a detached adversarial term, KD on source outputs."""
    torch.manual_seed(0)
    features = torch.randn(8, 5, requires_grad=True)  # 4 source, then 4 target images
    heads, critic = UniKDHeads(5, 7, hidden=16), FeatureDiscriminator(7, hidden=16).requires_grad_(False)
    logits, labels = torch.randn(8, 3, requires_grad=True), torch.tensor([0, 1, 2, 0])
    teacher_logits, teacher_features = torch.randn(8, 3), torch.randn(8, 7)

    def losses(teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        return unikd_losses(
            logits[:4], labels, logits[4:], teacher[4:], heads(features, 1.0), teacher_features, critic, 0.5
        )

    terms = losses(teacher_logits)
    (gradient,) = torch.autograd.grad(terms["adversarial"], features)
    assert gradient.abs().sum() > 0
    other_source = teacher_logits.clone()
    other_source[:4] = torch.randn(4, 3)
    assert losses(other_source)["kd"].item() == pytest.approx(terms["kd"].item())
    (kd_gradient,) = torch.autograd.grad(terms["kd"], logits)
    assert kd_gradient[:4].abs().sum() == 0 and kd_gradient[4:].abs().sum() > 0
    expected = terms["cross_entropy"] + 0.5 * terms["domain"] + 0.5 * terms["kd"] + terms["adversarial"] + terms["hint"]
    torch.testing.assert_close(terms["loss"], expected)


def test_every_kd_name_of_the_command_line_is_a_recipe() -> None:
    assert get_args(DistillKD) == tuple(RECIPES)


def test_the_float64_batch_norm_of_one_process_is_batch_norm() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    converted = _all_reduced(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    converted.load_state_dict(plain.state_dict())
    assert isinstance(converted[1], AllReducedBatchNorm)
    images = torch.randn(6, 3, 8, 8) * 2 + 1
    outputs = [model(images) for model in (plain, converted)]
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    for output in outputs:
        output.square().mean().backward()
    torch.testing.assert_close(plain[0].weight.grad, converted[0].weight.grad, atol=1e-5, rtol=1e-4)
    for name, buffer in plain[1].state_dict().items():
        torch.testing.assert_close(buffer, converted[1].state_dict()[name], atol=1e-6, rtol=1e-5)
    converted.eval()
    plain.eval()
    torch.testing.assert_close(plain(images), converted(images))
