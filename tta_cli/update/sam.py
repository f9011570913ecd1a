"""Sharpness-aware minimisation with SAR's model recovery (Niu et al., ICLR 2023, sec. 4).

SAM (Foret et al., ICLR 2021) looks for parameters whose neighbourhood has a uniformly low
loss. With ``g`` the gradient at θ:

    ε̂ = ρ · g / ||g||                  (SAR eq. 4, first-order solution of the inner max)
    g' = ∇L(θ + ε̂)                     (the closure: the same batch, evaluated at θ + ε̂)
    θ ← base_optimizer(θ, g')          (SAR eq. 5; SGD with momentum in SAR)

ρ = 0 gives ``g' = g``: the step is the base optimizer's plain step.

**Recovery** (SAR sec. 4, "model recovery scheme"): ``e_m``, a moving average (momentum 0.9)
of the loss at θ + ε̂, tracks collapse; when it falls below ``reset_below`` (0.2), θ and the
optimizer state return to the source state and ``e_m`` starts afresh.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from tta_cli.update.base import APPLIED, Closure, Outcome, UpdateOutcome, split_like
from tta_cli.update.optimizer import OptimizerRule


class SharpnessAware:
    """SAM around a base optimizer, with SAR's collapse recovery (``reset_below=None``: off)."""

    def __init__(
        self,
        base: OptimizerRule,
        params: list[torch.nn.Parameter],
        rho: float = 0.05,
        reset_below: float | None = 0.2,
        ema_momentum: float = 0.9,
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho must be non-negative, got {rho}.")
        self.base = base
        self.rho = rho
        self.reset_below = reset_below
        self.ema_momentum = ema_momentum
        self.loss_ema: float | None = None
        # Recovery returns to the parameters the rule was built with: the source model.
        self.source = [param.detach().clone() for param in params]
        self.source_optimizer = copy.deepcopy(base.state_dict())

    def apply(
        self, params: list[torch.nn.Parameter], gradient: torch.Tensor, closure: Closure | None = None
    ) -> UpdateOutcome:
        if closure is None:
            raise ValueError("Sharpness-aware minimisation re-evaluates the loss; it needs a closure.")
        here = [param.detach().clone() for param in params]
        with torch.no_grad():
            step = self.rho * gradient / (gradient.norm() + 1e-12)
            for param, part in zip(params, split_like(step, params), strict=True):
                param.add_(part)
        evaluated = closure()
        with torch.no_grad():
            # Copied back rather than subtracted, so that θ returns exactly.
            for param, value in zip(params, here, strict=True):
                param.copy_(value)
        if evaluated is None:
            return UpdateOutcome(Outcome.SKIPPED, "no reliable sample at the perturbed parameters")
        loss, sharp_gradient = evaluated
        if math.isfinite(loss):
            momentum = self.ema_momentum
            self.loss_ema = loss if self.loss_ema is None else momentum * self.loss_ema + (1 - momentum) * loss
        self.base.apply(params, sharp_gradient)
        if self.reset_below is not None and self.loss_ema is not None and self.loss_ema < self.reset_below:
            ema = self.loss_ema
            with torch.no_grad():
                for param, source in zip(params, self.source, strict=True):
                    param.copy_(source)
            self.base.load_state_dict(self.source_optimizer)
            self.loss_ema = None
            return UpdateOutcome(Outcome.RESET_TO_SOURCE, f"loss moving average {ema:.3f} < {self.reset_below}")
        return APPLIED

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "loss_ema": self.loss_ema}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self.loss_ema = state["loss_ema"]
