"""Update rules: turn one gradient over θ into a parameter change."""

from __future__ import annotations

from typing import Any

import torch

from tta_cli.errors import UsageError
from tta_cli.update.base import APPLIED, Closure, Outcome, UpdateOutcome, UpdateRule, flatten, split_like
from tta_cli.update.optimizer import OptimizerRule, make_optimizer_rule
from tta_cli.update.sam import SharpnessAware

UPDATES = ("step", "sam")


def make_update_rule(
    kind: str, optimizer: str, params: list[torch.nn.Parameter], lr: float, options: dict[str, Any] | None = None
) -> UpdateRule:
    """``kind`` "step": the optimizer's own step; "sam": sharpness-aware around it (SAR)."""
    base = make_optimizer_rule(optimizer, params, lr)
    if kind == "step":
        return base
    if kind == "sam":
        return SharpnessAware(base, params, **(options or {}))
    raise UsageError(f"Unknown update rule {kind!r}; use one of {', '.join(UPDATES)}.")


__all__ = [
    "APPLIED",
    "Closure",
    "OptimizerRule",
    "Outcome",
    "SharpnessAware",
    "UpdateOutcome",
    "UpdateRule",
    "flatten",
    "make_optimizer_rule",
    "make_update_rule",
    "split_like",
]
