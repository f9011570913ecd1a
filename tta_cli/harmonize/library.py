"""Aggregators from torchjd (Quinton & Rey, "Jacobian Descent for Multi-Objective
Optimization", arXiv 2406.16232): PCGrad, UPGrad and MGDA as weightings of the Gramian
``G = J·Jᵀ`` of the K gradients, so the weights they apply can be logged like ours."""

from __future__ import annotations

import torch
from torchjd.aggregation import MGDAWeighting, PCGradWeighting, UPGradWeighting, Weighting

from tta_cli.harmonize.base import Harmonized, Harmonizer, combine


class GramianWeighting(Harmonizer):
    def __init__(self, name: str, weighting: Weighting) -> None:
        self.name = name
        self.weighting = weighting

    def __call__(self, gradients: torch.Tensor) -> Harmonized:
        # Weightings solve small K×K problems; the Gramian is computed in float64 so that
        # near-parallel gradients do not make it indefinite.
        gramian = (gradients.double() @ gradients.double().T).to(gradients.dtype)
        return combine(gradients, self.weighting(gramian).to(gradients.dtype))


def pcgrad() -> Harmonizer:
    return GramianWeighting("pcgrad", PCGradWeighting())


def upgrad() -> Harmonizer:
    return GramianWeighting("upgrad", UPGradWeighting())


def mgda() -> Harmonizer:
    return GramianWeighting("mgda", MGDAWeighting())
