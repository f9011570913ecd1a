"""Hand-made update rules (torch optimizers) behind the interface the learned one also uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from tta_cli.errors import UsageError

Closure = Callable[[], "tuple[float, torch.Tensor] | None"]
"""Evaluates the same batch again at the parameters' current values: ``(loss, flat gradient)``,
or ``None`` when the objectives find nothing to learn from there. As with ``closure`` in
``torch.optim``, a rule that needs the loss elsewhere than at θ (SAM) calls it; others ignore it."""


RESET_TO_SOURCE = "reset to the source state"
"""How the note of a rule begins when it returned θ and its own state to the source's (SAR's
recovery); the adapter then returns what else adapts (normalisation statistics) there too."""


class UpdateRule(Protocol):
    """``(θ, g) -> θ'``: applies a flat gradient to the parameters, keeping its own state.

    ``apply`` returns a note for the step's record ("" when there is nothing to say), such as
    SAR's reset to the source state.
    """

    def apply(
        self, params: list[torch.nn.Parameter], gradient: torch.Tensor, closure: Closure | None = None
    ) -> str: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class OptimizerRule:
    """A torch optimizer fed with the harmonised gradient instead of ``loss.backward()``."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def apply(self, params: list[torch.nn.Parameter], gradient: torch.Tensor, closure: Closure | None = None) -> str:
        offset = 0
        for param in params:
            size = param.numel()
            param.grad = gradient[offset : offset + size].view_as(param).clone()
            offset += size
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return ""

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


def make_update_rule(
    kind: str, optimizer: str, params: list[torch.nn.Parameter], lr: float, options: dict[str, Any] | None = None
) -> UpdateRule:
    """``kind`` "step": the optimizer's own step; "sam": sharpness-aware around it (SAR)."""
    base = make_optimizer_rule(optimizer, params, lr)
    if kind == "step":
        return base
    if kind == "sam":
        from tta_cli.update.sam import SharpnessAware

        return SharpnessAware(base, params, **(options or {}))
    raise UsageError(f"Unknown update rule {kind!r}; use 'step' or 'sam'.")
