"""How the student learns, chosen by name (``tta-cli distill --kd``): UNI-KD and its two baselines.

A recipe says which data a step needs (target images, the teacher's outputs), which modules
learn along with the student (``heads``) or on their own (``critic``), and the student's loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from tta_cli.distill.unikd import TEMPERATURE, FeatureDiscriminator, UniKDHeads, distillation_loss, unikd_losses


@dataclass
class StepOutputs:
    """One step's batch as the losses see it: the student's logits for the source images first,
    then for the target images (if the recipe uses them), and what else was computed on them."""

    source_labels: torch.Tensor
    logits: torch.Tensor
    progress: float
    """Training progress in [0, 1]."""
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_logits: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None

    @property
    def sources(self) -> int:
        return len(self.source_labels)

    def teacher(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.teacher_logits is None or self.teacher_features is None:
            raise RuntimeError("This recipe needs the teacher's outputs, which the step did not compute.")
        return self.teacher_logits, self.teacher_features


class Recipe(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    uses_target: ClassVar[bool] = True
    uses_teacher: ClassVar[bool] = True
    schedules: ClassVar[dict[str, str]] = {}
    """The recipe's weights that change with the training progress p, as formulas."""

    def __init__(self, temperature: float = TEMPERATURE) -> None:
        self.temperature = temperature

    def heads(self, student_width: int, teacher_width: int) -> nn.Module | None:
        """Modules that learn with the student, called as ``heads(features, grl_coefficient)``."""
        return None

    def critic(self, teacher_width: int) -> nn.Module | None:
        """A module that learns on its own loss, one step before the student's."""
        return None

    @abstractmethod
    def losses(self, outputs: StepOutputs, critic: nn.Module | None) -> dict[str, torch.Tensor]:
        """The student's loss (``"loss"``) and the terms and measures to report."""


class UniKD(Recipe):
    name = "unikd"
    summary = "UNI-KD: adversarial feature distillation and domain-weighted KD on target images"
    schedules: ClassVar[dict[str, str]] = {"beta": "p", "grl_coefficient": "2 / (1 + exp(-10 p)) - 1"}

    def heads(self, student_width: int, teacher_width: int) -> nn.Module:
        return UniKDHeads(student_width, teacher_width)

    def critic(self, teacher_width: int) -> nn.Module:
        return FeatureDiscriminator(teacher_width)

    def losses(self, outputs: StepOutputs, critic: nn.Module | None) -> dict[str, torch.Tensor]:
        if critic is None:
            raise RuntimeError("UNI-KD needs its feature-domain discriminator.")
        teacher_logits, teacher_features = outputs.teacher()
        sources = outputs.sources
        return unikd_losses(
            outputs.logits[:sources],
            outputs.source_labels,
            outputs.logits[sources:],
            teacher_logits[sources:],
            outputs.heads,
            teacher_features,
            critic,
            outputs.progress,
            self.temperature,
        )


class PlainKD(Recipe):
    name = "plain"
    summary = "Hinton KD on source and target images, plus cross-entropy on the source"

    def losses(self, outputs: StepOutputs, critic: nn.Module | None) -> dict[str, torch.Tensor]:
        teacher_logits, _ = outputs.teacher()
        cross_entropy = F.cross_entropy(outputs.logits[: outputs.sources], outputs.source_labels)
        kd = distillation_loss(outputs.logits, teacher_logits, self.temperature)
        return {"loss": cross_entropy + kd, "cross_entropy": cross_entropy, "kd": kd}


class SourceOnly(Recipe):
    name = "none"
    summary = "No teacher: cross-entropy on the labeled source images only"
    uses_target = False
    uses_teacher = False

    def losses(self, outputs: StepOutputs, critic: nn.Module | None) -> dict[str, torch.Tensor]:
        cross_entropy = F.cross_entropy(outputs.logits, outputs.source_labels)
        return {"loss": cross_entropy, "cross_entropy": cross_entropy}


RECIPES: dict[str, type[Recipe]] = {recipe.name: recipe for recipe in (UniKD, PlainKD, SourceOnly)}
