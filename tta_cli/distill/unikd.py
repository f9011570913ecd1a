"""UNI-KD: universal and joint knowledge distilled from a teacher adapted to the target domain
into a small student (Xu et al., "Distilling Universal and Joint Knowledge for Cross-Domain
Model Compression on Time Series Data", IJCAI 2023, arXiv 2307.03347).

With labeled source images and unlabeled target images, per batch:
- **universal knowledge** (features): a feature-domain discriminator ``D_f`` tells the teacher's
  penultimate features from the student's (through a linear adapter to the teacher's width) on
  source and target images; the student and adapter learn to fool it (``L_adv``), plus an L1
  hint between adapted student features and teacher features (``L_hint``); ``L_G = L_adv + L_hint``;
- **joint knowledge** (logits): a data-domain discriminator ``D_d`` on the student's features,
  behind a gradient-reversal layer of coefficient ``2/(1+e^(−10p)) − 1``, tells source from
  target (``L_domain``); each target image weighs ``w = 1 − |D_d(x)_0 − D_d(x)_1|`` in the
  distillation loss ``L_KD = T² · Σ w · KL(softmax(t/T) ‖ softmax(s/T)) / B`` (T = 4), so images
  that look like both domains (``w ≈ 1``) carry most of the teacher's target knowledge;
- total, for the student, adapter and ``D_d``: ``CE_src + (1−β)·L_domain + β·L_KD + L_G``; ``D_f``
  learns on its own binary cross-entropy, one step before the student's.

``p`` is the training progress in [0, 1]. β is ``p`` itself (``kd_weight``).

Differences from the public code (github.com/ijcai2023/UNI_KD): the
adversarial term reaches the student (the public code detaches the adapted features first, so
that term never trains it); the KD term uses the target images' own logits (the public code
computes it on source features); β grows from 0 to 1 over the training (the public code's
barely moves).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TEMPERATURE = 4.0
HIDDEN = 256
"""Width of the discriminators' two hidden layers."""


def grl_coefficient(progress: float) -> float:
    """The gradient-reversal coefficient ``2/(1+e^(−10p)) − 1`` (Ganin & Lempitsky, ICML 2015):
    0 at the start, so that a random discriminator does not steer the student, near 1 from
    ``p ≈ 0.5``.

    >>> grl_coefficient(0.0), round(grl_coefficient(0.5), 4), round(grl_coefficient(1.0), 4)
    (0.0, 0.9866, 0.9999)
    """
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def kd_weight(progress: float) -> float:
    """β = p: the distillation term starts at 0 while ``D_d``, whose outputs weigh it, has not
    learned yet, and outweighs the domain term (β > 1 − β) over the second half of training.
    The gradient-reversal ramp would pass 0.76 at p = 0.2, handing the loss to weights from a
    barely trained discriminator.

    >>> kd_weight(0.0), kd_weight(0.25), kd_weight(1.0)
    (0.0, 0.25, 1.0)
    """
    return min(max(progress, 0.0), 1.0)


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient times ``−coefficient`` backward."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return features.view_as(features)

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coefficient * gradient, None


def reverse_gradient(features: torch.Tensor, coefficient: float) -> torch.Tensor:
    """``features`` unchanged, with the gradient that flows back through them reversed and scaled.

    >>> x = torch.ones(2, requires_grad=True)
    >>> reverse_gradient(x, 0.5).sum().backward()
    >>> x.grad
    tensor([-0.5000, -0.5000])
    """
    return GradientReversal.apply(features, coefficient)


def _mlp(width: int, outputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs)
    )


class FeatureDiscriminator(nn.Module):
    """``D_f``: one logit per feature vector, > 0 for "the teacher's" (a sigmoid and binary
    cross-entropy read it, fused in ``F.binary_cross_entropy_with_logits``)."""

    def __init__(self, width: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.net = _mlp(width, 1, hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)


class UniKDHeads(nn.Module):
    """What learns along with the student: the adapter to the teacher's feature width and the
    data-domain discriminator ``D_d`` (2-way: source, target) behind the gradient reversal."""

    def __init__(self, student_width: int, teacher_width: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.adapter = nn.Linear(student_width, teacher_width)
        self.domain_discriminator = _mlp(student_width, 2, hidden)

    def forward(self, features: torch.Tensor, coefficient: float) -> dict[str, torch.Tensor]:
        return {
            "adapted": self.adapter(features),
            "domain_logits": self.domain_discriminator(reverse_gradient(features, coefficient)),
        }


def joint_weights(domain_logits: torch.Tensor) -> torch.Tensor:
    """``w = 1 − |D_d(x)_0 − D_d(x)_1|`` from the softmax of the domain logits, detached: 1 for
    an image the discriminator cannot place, 0 for one it is sure of.

    >>> joint_weights(torch.tensor([[0.0, 0.0], [10.0, 0.0]]))
    tensor([1.0000e+00, 9.0837e-05])
    """
    probabilities = domain_logits.detach().softmax(dim=1)
    return 1.0 - (probabilities[:, 0] - probabilities[:, 1]).abs()


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = TEMPERATURE,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T² · Σ_i w_i · KL(softmax(t_i/T) ‖ softmax(s_i/T)) / B`` (Hinton et al. 2015 with
    per-sample weights; all 1 when ``weights`` is ``None``).

    >>> round(distillation_loss(torch.zeros(1, 2), torch.tensor([[4.0, 0.0]])).item(), 4)
    1.7751
    """
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    divergence = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
    if weights is not None:
        divergence = divergence * weights
    return temperature**2 * divergence.mean()


def feature_discriminator_loss(
    discriminator: nn.Module, teacher_features: torch.Tensor, student_features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``D_f``'s own loss and accuracy: binary cross-entropy of "teacher" (1) against "student"
    (0) over both sets; the student's features come detached, so this trains ``D_f`` only."""
    logits = discriminator(torch.cat([teacher_features, student_features.detach()]))
    labels = torch.cat([torch.ones(len(teacher_features)), torch.zeros(len(student_features))]).to(logits)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    return loss, ((logits > 0).float() == labels).float().mean()


def unikd_losses(
    source_logits: torch.Tensor,
    source_labels: torch.Tensor,
    target_logits: torch.Tensor,
    teacher_target_logits: torch.Tensor,
    heads: dict[str, torch.Tensor],
    teacher_features: torch.Tensor,
    feature_discriminator: nn.Module,
    progress: float,
    temperature: float = TEMPERATURE,
) -> dict[str, torch.Tensor]:
    """The student's loss (``"loss"``) and its terms for one batch: the source images first, then
    as many target images. ``heads`` is ``UniKDHeads``' output on the student's features of both,
    ``teacher_features`` the teacher's. ``feature_discriminator`` must not collect gradients
    (frozen by the caller): here it only judges."""
    sources = len(source_logits)
    domain_logits = heads["domain_logits"]
    domains = torch.cat([torch.zeros(sources), torch.ones(len(domain_logits) - sources)]).long()
    domains = domains.to(domain_logits.device)
    domain = F.cross_entropy(domain_logits, domains)
    weights = joint_weights(domain_logits[sources:])
    kd = distillation_loss(target_logits, teacher_target_logits, temperature, weights)
    cross_entropy = F.cross_entropy(source_logits, source_labels)
    verdicts = feature_discriminator(heads["adapted"])
    adversarial = F.binary_cross_entropy_with_logits(verdicts, torch.ones_like(verdicts))
    hint = F.l1_loss(heads["adapted"], teacher_features)
    beta = kd_weight(progress)
    loss = cross_entropy + (1 - beta) * domain + beta * kd + adversarial + hint
    domain_accuracy = (domain_logits.detach().argmax(dim=1) == domains).float().mean()
    return {
        "loss": loss,
        "cross_entropy": cross_entropy,
        "domain": domain,
        "kd": kd,
        "adversarial": adversarial,
        "hint": hint,
        "joint_weight": weights.mean(),
        "domain_discriminator_accuracy": domain_accuracy,
    }
