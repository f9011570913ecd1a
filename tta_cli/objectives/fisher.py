"""EATA's anti-forgetting regulariser (Niu et al., ICML 2022, eq. 8-9).

    R(θ) = λ · Σ_i F_i · (θ_i − θ0_i)²

``θ0`` are the source values of the adapted parameters and ``F`` the diagonal of their Fisher
information, measured once on clean source images before adaptation (eq. 9). As in the paper's
public code, the log-likelihood is that of the model's own prediction (cross-entropy against
the arg-max pseudo-label, no labels needed), each batch contributes the square of its mean
gradient, and the squares are averaged over batches; the model is in the state it adapts in
(BatchNorm normalising with the batch's statistics). The paper finds 500 images enough.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from tta_cli.objectives.base import Stateless
from tta_cli.streams import Batch

FisherInformation = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""Per parameter name: (Fisher diagonal, source value θ0)."""


def measure_fisher(
    model: nn.Module, params: dict[str, nn.Parameter], images: Iterable[torch.Tensor]
) -> FisherInformation:
    """Fisher diagonal of ``params`` over batches of clean, preprocessed source ``images``.

    ``model`` must already be configured as it adapts (``configure_model``); gradients of
    ``params`` are left cleared.
    """
    squares = {name: torch.zeros_like(param) for name, param in params.items()}
    batches = 0
    names, tensors = list(params), list(params.values())
    for batch in images:
        logits = model(batch)
        loss = F.cross_entropy(logits, logits.detach().argmax(dim=1))
        for name, gradient in zip(names, torch.autograd.grad(loss, tensors), strict=True):
            squares[name] += gradient.detach() ** 2
        batches += 1
    if batches == 0:
        raise ValueError("No source images to measure the Fisher information on.")
    return {name: (squares[name] / batches, params[name].detach().clone()) for name in params}


class FisherRegulariser(Stateless):
    """``λ · Σ F (θ − θ0)²`` over the parameters named in ``fisher``, read live from ``model``."""

    name = "fisher"

    def __init__(self, model: nn.Module, fisher: FisherInformation, weight: float) -> None:
        live = dict(model.named_parameters())
        missing = sorted(set(fisher) - set(live))
        if missing:
            raise ValueError(f"The Fisher information names parameters the model lacks: {missing[:3]}.")
        self.terms = [
            (live[name], information.to(live[name].device), anchor.to(live[name].device))
            for name, (information, anchor) in fisher.items()
        ]
        self.weight = weight

    def __call__(
        self, logits: torch.Tensor, features: dict[str, torch.Tensor], batch: Batch, revisit: bool = False
    ) -> torch.Tensor:
        penalty = sum(((param - anchor) ** 2 * information).sum() for param, information, anchor in self.terms)
        return self.weight * torch.as_tensor(penalty, device=logits.device)
