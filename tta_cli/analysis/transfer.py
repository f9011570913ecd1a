"""Transfer and interference per sample (Zhang, Hayes & Kanan, arXiv 2107.05445; METHODS.md §4).

A labeled sample of domain D is predicted twice: by the model adapted on D alone
("independent") and by the model adapted on the mix of every domain ("joint").

- **transfer**: wrong alone, right jointly (the other domains helped it);
- **interference**: right alone, wrong jointly (the other domains hurt it);
- the per-sample loss difference ``ℓ_joint − ℓ_alone`` gives the same split without a
  threshold on correctness: negative where the mix helped, positive where it hurt.

Rates are over all of D's samples, so ``accuracy_joint − accuracy_alone = transfer − interference``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """One domain's samples split by how the joint model did against the independent one."""

    samples: int
    transfer: int
    interference: int
    helped: int | None = None
    """Samples whose loss was lower jointly (``None`` without losses)."""
    hurt: int | None = None
    mean_loss_difference: float | None = None

    @property
    def transfer_rate(self) -> float:
        return self.transfer / self.samples if self.samples else float("nan")

    @property
    def interference_rate(self) -> float:
        return self.interference / self.samples if self.samples else float("nan")

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "samples": self.samples,
            "transfer": self.transfer,
            "interference": self.interference,
            "transfer_percent": round(100 * self.transfer_rate, 2),
            "interference_percent": round(100 * self.interference_rate, 2),
            "loss_lower_jointly": self.helped,
            "loss_higher_jointly": self.hurt,
            "mean_loss_difference": None if self.mean_loss_difference is None else round(self.mean_loss_difference, 5),
        }


def split(
    alone_correct: Sequence[bool] | np.ndarray,
    joint_correct: Sequence[bool] | np.ndarray,
    alone_loss: Sequence[float] | np.ndarray | None = None,
    joint_loss: Sequence[float] | np.ndarray | None = None,
) -> Split:
    """The split of samples given in the same order under both models.

    >>> split([True, True, False, False], [True, False, True, False], [0.1, 0.2, 2.0, 3.0], [0.1, 1.5, 0.4, 2.5])
    Split(samples=4, transfer=1, interference=1, helped=2, hurt=1, mean_loss_difference=-0.2)
    """
    alone, joint = np.asarray(alone_correct, dtype=bool), np.asarray(joint_correct, dtype=bool)
    if alone.shape != joint.shape:
        raise ValueError(f"{len(alone)} samples alone against {len(joint)} jointly.")
    result = Split(len(alone), int((~alone & joint).sum()), int((alone & ~joint).sum()))
    if alone_loss is None or joint_loss is None:
        return result
    difference = np.asarray(joint_loss, dtype=np.float64) - np.asarray(alone_loss, dtype=np.float64)
    return Split(
        result.samples,
        result.transfer,
        result.interference,
        helped=int((difference < 0).sum()),
        hurt=int((difference > 0).sum()),
        mean_loss_difference=round(float(difference.mean()), 6) if len(difference) else 0.0,
    )


def split_by_id(alone: Mapping[str, bool], joint: Mapping[str, bool]) -> Split:
    """The split over the samples (by id) that both runs predicted."""
    shared = [image_id for image_id in joint if image_id in alone]
    return split([alone[image_id] for image_id in shared], [joint[image_id] for image_id in shared])
