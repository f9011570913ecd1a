"""Hand-made update rules (torch optimizers) behind the interface the learned one also uses."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from tta_cli.errors import UsageError


class UpdateRule(Protocol):
    """``(θ, g) -> θ'``: applies a flat gradient to the parameters, keeping its own state."""

    def apply(self, params: list[torch.nn.Parameter], gradient: torch.Tensor) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class OptimizerRule:
    """A torch optimizer fed with the harmonised gradient instead of ``loss.backward()``."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def apply(self, params: list[torch.nn.Parameter], gradient: torch.Tensor) -> None:
        offset = 0
        for param in params:
            size = param.numel()
            param.grad = gradient[offset : offset + size].view_as(param).clone()
            offset += size
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

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
