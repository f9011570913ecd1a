"""Adam-style moments (Kingma & Ba, "Adam", ICLR 2015, Algorithm 1), the one implementation that
MGG's features (``mgg.rule``) and SAM-GS's momentum (``harmonize.samgs``) share: an exponential
moving average started at zero, and its bias correction. Each caller keeps its own state, so its
saved snapshots keep their layout.
"""

from __future__ import annotations

from typing import TypeVar

import torch

Moment = TypeVar("Moment", torch.Tensor, float)


def moving_average(average: Moment, value: Moment, decay: float) -> Moment:
    """``decay·average + (1 − decay)·value``: one step of the moment ``average``.

    >>> moving_average(1.0, 3.0, 0.75)
    1.5
    """
    return decay * average + (1 - decay) * value


def bias_corrected(average: Moment, decay: float, steps: int) -> Moment:
    """``average / (1 − decay^steps)``: a moment started at zero, freed of its pull towards zero
    after ``steps`` updates (so after the first step it equals that step's value).

    >>> bias_corrected(moving_average(0.0, 2.0, 0.75), 0.75, 1)
    2.0
    """
    return average / (1 - decay**steps)
