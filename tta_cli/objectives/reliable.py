"""Entropy on reliable samples only: the objective of EATA and of SAR.

- **Reliable** (EATA, Niu et al., ICML 2022, eq. 3; SAR, Niu et al., ICLR 2023, eq. 2): only
  samples whose prediction entropy is below ``E0 = margin · ln C`` (margin 0.4 in both papers)
  contribute; high-entropy samples give noisy, often harmful gradients.
- **Non-redundant** (EATA eq. 4-5, optional): a reliable sample whose probability vector has
  cosine similarity ``≥ ε`` with a moving average of the probabilities of past selected samples
  teaches little new and is skipped. The average starts as the mean of the first batch's
  reliable samples and then moves with momentum 0.9 over each batch's selected samples.
- **Weighted** (EATA eq. 6, optional): each selected sample counts ``1 / exp(H − E0)``, so the
  more confident ones count more.

On a revisit of the same batch (SAM's second pass at perturbed θ, SAR sec. 4), only the
samples selected on the first pass are candidates, and the entropy filter is applied again at
the new θ; the running average is not touched.

The loss is the (weighted) mean over selected samples; ``None`` when no sample is selected, which
tells the engine there is nothing to learn from this batch, and θ does not move. EATA's public
code does the same; SAR's takes the mean of an empty selection (NaN, zero gradients) and so still
moves θ by the SGD momentum alone on such a batch, a corner case not reproduced here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from tta_cli.objectives.base import sample_mean
from tta_cli.objectives.entropy import entropy
from tta_cli.streams import Batch


class ReliableEntropy:
    name = "reliable-entropy"

    def __init__(
        self,
        num_classes: int,
        margin: float = 0.4,
        redundancy_margin: float | None = None,
        weight_by_certainty: bool = False,
        momentum: float = 0.9,
    ) -> None:
        self.entropy_margin = margin * math.log(num_classes)  # E0
        self.redundancy_margin = redundancy_margin  # ε; None: no redundancy filter (SAR)
        self.weight_by_certainty = weight_by_certainty
        self.momentum = momentum
        self.reset()

    def reset(self) -> None:
        """Forget the running average of probabilities and the last selection."""
        self.mean_probabilities: torch.Tensor | None = None
        self.selected = torch.zeros(0, dtype=torch.bool)
        self.reliable_count = 0

    def state_dict(self) -> dict[str, Any]:
        """The running average of probabilities (EATA's redundancy filter); the selection is
        the current batch's only."""
        return {} if self.mean_probabilities is None else {"mean_probabilities": self.mean_probabilities.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        if "mean_probabilities" in state:
            self.mean_probabilities = state["mean_probabilities"].clone()

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the samples that are reliable and, if asked, not redundant.

        Updates the running average of probabilities with the selected samples.
        """
        probabilities = logits.detach().softmax(dim=1)
        reliable = entropy(logits.detach()) < self.entropy_margin
        self.reliable_count = int(reliable.sum())
        selected = reliable
        if self.redundancy_margin is not None:
            if self.mean_probabilities is not None:
                # A restored average arrives on the CPU.
                mean = self.mean_probabilities.to(probabilities.device)
                similarity = F.cosine_similarity(probabilities, mean.unsqueeze(0), dim=1)
                selected = reliable & (similarity.abs() < self.redundancy_margin)
            if selected.any():
                batch_mean = probabilities[selected].mean(dim=0)
                self.mean_probabilities = (
                    batch_mean
                    if self.mean_probabilities is None
                    else self.momentum * self.mean_probabilities.to(batch_mean.device)
                    + (1 - self.momentum) * batch_mean
                )
        return selected

    def __call__(
        self, logits: torch.Tensor, features: dict[str, torch.Tensor], batch: Batch, revisit: bool = False
    ) -> torch.Tensor | None:
        entropies = entropy(logits)
        if revisit:
            # SAR filters again at the perturbed θ, among the first pass's selection.
            selected = self.selected & (entropies.detach() < self.entropy_margin)
        else:
            selected = self.selected = self.select(logits)
        if not selected.any():
            return None
        chosen = entropies[selected]
        if self.weight_by_certainty:
            chosen = chosen * torch.exp(-(chosen.detach() - self.entropy_margin))
        return sample_mean(chosen, None if batch.weights is None else batch.weights[selected])
