"""Similarity-Aware Momentum Gradient Surgery, SAM-GS (Borsani et al., "Gradient Similarity
Surgery in Multi-Task Deep Learning", arXiv 2506.06130, Algorithm 1).

Magnitude similarity ``S_ij = 2‖g_i‖‖g_j‖ / (‖g_i‖² + ‖g_j‖²)``, averaged over pairs (s̄):
- s̄ < γ (magnitudes disagree): equalise, ``g = Σ_k g_k/‖g_k‖ · mean_k ‖g_k‖``;
- otherwise: momentum modulation, ``g = Σ_k g_k ⊙ |M̂_k| / sqrt(v̂)``,
with Adam-style moments ``M_k`` of each gradient and ``v`` of ``(1 − s̄)²``; then ``g ← K·g``
clipped to norm 1 (the clip bounds 1/sqrt(v̂) when magnitudes agree).
"""

from __future__ import annotations

from typing import Any

import torch

from tta_cli.harmonize.base import Harmonized, Harmonizer
from tta_cli.moments import bias_corrected, moving_average


class SAMGS(Harmonizer):
    """Both branches, checked by hand:

    >>> SAMGS()(torch.tensor([[100.0, 0.0], [0.0, 1.0]])).gradient  # s̄ ≈ 0.02 < γ: equalise
    tensor([0.7071, 0.7071])
    >>> SAMGS()(torch.tensor([[2.0, 0.0], [0.0, 1.0]])).gradient  # s̄ = 0.8: M̂ = g, v̂ = 1e-6
    tensor([0.9701, 0.2425])
    """

    name = "sam-gs"

    def __init__(self, beta1: float = 0.9, beta2: float = 0.99, gamma: float = 0.1, max_norm: float = 1.0) -> None:
        self.beta1, self.beta2, self.gamma, self.max_norm = beta1, beta2, gamma, max_norm
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.momentum: torch.Tensor | None = None
        self.second_moment = 0.0

    def __call__(self, gradients: torch.Tensor) -> Harmonized:
        count = len(gradients)
        norms = gradients.norm(dim=1)
        rows, cols = torch.triu_indices(count, count, offset=1)
        similarity = 2 * norms[rows] * norms[cols] / (norms[rows] ** 2 + norms[cols] ** 2).clamp_min(1e-30)
        mean_similarity = similarity.mean().item() if count > 1 else 1.0

        self.steps += 1
        if self.momentum is None:
            self.momentum = torch.zeros_like(gradients)
        self.momentum = moving_average(self.momentum, gradients, self.beta1)
        self.second_moment = moving_average(self.second_moment, (1 - mean_similarity) ** 2, self.beta2) + 1e-8
        momentum_hat = bias_corrected(self.momentum, self.beta1, self.steps)
        second_hat = bias_corrected(self.second_moment, self.beta2, self.steps)

        if mean_similarity < self.gamma:
            scale = (norms.mean() / norms.clamp_min(1e-30)).unsqueeze(1)
            contributions = gradients * scale
        else:
            contributions = gradients * momentum_hat.abs() / second_hat**0.5
        combined = count * contributions.sum(dim=0)
        clip = min(1.0, self.max_norm / max(combined.norm().item(), 1e-30))
        gradient = combined * clip
        weights = count * clip * (contributions * gradients).sum(dim=1) / (norms**2).clamp_min(1e-30)
        branch = 0.0 if mean_similarity < self.gamma else 1.0
        return Harmonized(gradient, weights, {"similarity": mean_similarity, "modulated": branch})

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self.steps, "second_moment": self.second_moment}
        if self.momentum is not None:
            state["momentum"] = self.momentum.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            self.reset()
            return
        self.steps = int(state["steps"])
        self.momentum = state["momentum"].clone() if state.get("momentum") is not None else None
        self.second_moment = float(state["second_moment"])
