"""Label-free health checks on every step, and the decision to skip or roll back.

- A non-finite loss or gradient: the update is skipped. Non-finite predictions, or a
  non-finite parameter after the update: the state rolls back to ``last-good``.
- Collapse, as SAR's reset rule (Niu et al., ICLR 2023, section 4): the moving average of
  the prediction entropy falls below a threshold; or one class takes most predictions over
  a window of recent inputs. Either rolls the state back to ``last-good``.

``last-good`` trails the stream: a snapshot is promoted only after ``confirm_steps`` more
steps passed every check, so the state restored after an alarm predates the drift that
caused it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch

from tta_cli.config import GuardConfig


@dataclass(frozen=True)
class Verdict:
    action: str  # "ok", "skip" or "rollback"
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.action == "ok"


OK = Verdict("ok")


class Guard:
    def __init__(self, config: GuardConfig, num_classes: int) -> None:
        self.config = config
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Forget the signals' history (after a rollback, the restored state starts afresh)."""
        self.entropy_ema: float | None = None
        self.recent_predictions: deque[int] = deque(maxlen=self.config.majority_window)
        self.candidates: deque[tuple[int, str]] = deque()

    def majority_fraction(self) -> float:
        if not self.recent_predictions:
            return 0.0
        counts = torch.bincount(torch.tensor(list(self.recent_predictions)), minlength=self.num_classes)
        return counts.max().item() / len(self.recent_predictions)

    def check_gradient(self, loss: float, gradient: torch.Tensor) -> Verdict:
        if not self.config.enabled:
            return OK
        if not math.isfinite(loss):
            return Verdict("skip", f"non-finite loss ({loss})")
        if not torch.isfinite(gradient).all():
            return Verdict("skip", "non-finite gradient")
        return OK

    def check_state(self, params: list[torch.Tensor]) -> Verdict:
        if self.config.enabled and not all(torch.isfinite(param).all() for param in params):
            return Verdict("rollback", "non-finite parameter after the update")
        return OK

    def observe(self, predictions: torch.Tensor, entropy: torch.Tensor) -> Verdict:
        """Update the collapse signals with one batch's (pre-update) outputs."""
        mean_entropy = entropy.mean().item()
        if self.config.enabled and not math.isfinite(mean_entropy):
            return Verdict("rollback", "non-finite predictions")
        self.recent_predictions.extend(predictions.tolist())
        momentum = self.config.entropy_ema_momentum
        self.entropy_ema = (
            mean_entropy if self.entropy_ema is None else momentum * self.entropy_ema + (1 - momentum) * mean_entropy
        )
        if not self.config.enabled:
            return OK
        if self.entropy_ema < self.config.entropy_ema_min:
            return Verdict("rollback", f"entropy moving average {self.entropy_ema:.3f} < {self.config.entropy_ema_min}")
        window_full = len(self.recent_predictions) == self.config.majority_window
        majority = self.majority_fraction()
        if window_full and majority > self.config.majority_max:
            return Verdict(
                "rollback",
                f"one class took {majority:.0%} of the last {self.config.majority_window} predictions "
                f"(> {self.config.majority_max:.0%})",
            )
        return OK

    def promote(self, step: int, snapshot_id: str | None) -> tuple[int, str] | None:
        """Register a healthy step's snapshot; return the one that is now confirmed good, if any."""
        if snapshot_id is not None:
            self.candidates.append((step, snapshot_id))
        confirmed = None
        while self.candidates and step - self.candidates[0][0] >= self.config.confirm_steps:
            confirmed = self.candidates.popleft()
        return confirmed
