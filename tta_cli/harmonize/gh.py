"""Gradient Harmonization, GH and GH++ (Huang, Song & Zhang, "Gradient Harmonization in
Unsupervised Domain Adaptation", TPAMI 2024, arXiv 2408.00288, eqs. 6 and 12).

Two losses: role 1 is the prediction loss (here: entropy), role 2 the alignment loss. When
their gradients form an obtuse angle, the step is re-weighted as ``w1·g1 + w2·g2``; with
weights detached, that is the gradient of the weighted loss ``w1·L1 + w2·L2``, so any update
rule can follow. Acute or right angles keep ``w = (1, 1)``.
"""

from __future__ import annotations

import math

import torch

from tta_cli.harmonize.base import Harmonized, Harmonizer, combine


def _pair(gradients: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if len(gradients) != 2:
        raise ValueError(f"{name} harmonizes exactly two losses, got {len(gradients)}")
    return gradients[0], gradients[1]


class GH(Harmonizer):
    """Obtuse → acute: each gradient loses its component along the other.

    ``w1 = 1 − d/‖g1‖²``, ``w2 = 1 − d/‖g2‖²`` with ``d = ⟨g1, g2⟩ < 0``. For g1 = (1, 0) and
    g2 = (−1, 1): d = −1, w = (2, 1.5), step (0.5, 1.5), orthogonal to neither but acute to both.

    >>> result = GH()(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
    >>> result.weights.tolist(), result.gradient.tolist()
    ([2.0, 1.5], [0.5, 1.5])
    """

    name = "gh"

    def __call__(self, gradients: torch.Tensor) -> Harmonized:
        g1, g2 = _pair(gradients, "GH")
        dot = torch.dot(g1, g2)
        if dot >= 0:
            return combine(gradients, torch.ones(2, dtype=gradients.dtype, device=gradients.device))
        weights = torch.stack([1 - dot / g1.dot(g1).clamp_min(1e-30), 1 - dot / g2.dot(g2).clamp_min(1e-30)])
        return combine(gradients, weights)


class GHPlusPlus(Harmonizer):
    """Obtuse → right angle, staying closer to the original directions; role 1 is up-weighted.

    With the angle θ in degrees, ``β_max = θ − 90``, ``β = k·β_max``:
    ``w1 = 1 + 2·sin(β/2)``, ``w2 = 1 + 2·sin((β − β_max)/2)``. At 180° and k = 0.5:
    β = 45°, w1 = 1 + 2·sin 22.5° ≈ 1.765, w2 = 1 − 2·sin 22.5° ≈ 0.235.

    >>> result = GHPlusPlus(k=0.5)(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    >>> [round(w, 3) for w in result.weights.tolist()]
    [1.765, 0.235]
    """

    name = "gh++"

    def __init__(self, k: float = 0.5) -> None:
        if not 0 <= k <= 1:
            raise ValueError(f"GH++ needs k in [0, 1], got {k}")
        self.k = k

    def __call__(self, gradients: torch.Tensor) -> Harmonized:
        g1, g2 = _pair(gradients, "GH++")
        cosine = torch.nn.functional.cosine_similarity(g1, g2, dim=0).clamp(-1, 1).item()
        angle = math.degrees(math.acos(cosine))
        if angle <= 90:
            return combine(gradients, torch.ones(2, dtype=gradients.dtype, device=gradients.device))
        beta_max = angle - 90
        beta = self.k * beta_max
        w1 = 1 + 2 * math.sin(math.radians(beta / 2))
        w2 = 1 + 2 * math.sin(math.radians((beta - beta_max) / 2))
        return combine(gradients, torch.tensor([w1, w2], dtype=gradients.dtype, device=gradients.device))
