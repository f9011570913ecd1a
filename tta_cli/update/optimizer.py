"""Hand-made update rules: a torch optimizer fed with the harmonised gradient."""

from __future__ import annotations

from typing import Any, Literal

import torch

from tta_cli.errors import UsageError
from tta_cli.update.base import APPLIED, Closure, UpdateOutcome, split_like

OptimizerName = Literal["adam", "sgd"]


class OptimizerRule:
    """A torch optimizer fed with the harmonised gradient instead of ``loss.backward()``."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def apply(
        self, params: list[torch.nn.Parameter], gradient: torch.Tensor, closure: Closure | None = None
    ) -> UpdateOutcome:
        for param, part in zip(params, split_like(gradient, params), strict=True):
            param.grad = part.clone()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return APPLIED

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def make_optimizer_rule(name: str, params: list[torch.nn.Parameter], lr: float, momentum: float = 0.9) -> OptimizerRule:
    if name == "adam":
        return OptimizerRule(torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999)))
    if name == "sgd":
        return OptimizerRule(torch.optim.SGD(params, lr=lr, momentum=momentum))
    raise UsageError(f"Unknown optimizer {name!r}; use 'adam' or 'sgd'.")
