"""Label-free health checks on every step, and the decision to skip or roll back.

- A non-finite loss or gradient: the update is skipped. Non-finite predictions, or a
  non-finite parameter after the update: the state rolls back to ``last-good``.
- Collapse, as SAR's reset rule (Niu et al., ICLR 2023, section 4): the moving average of
  the prediction entropy falls below a threshold; or one class takes most predictions over
  a window of recent inputs. Either rolls the state back to ``last-good``. Without gradient
  steps (``compare_with_source``) only the one-class rule watches, and only where the source
  model's predictions on the same inputs were not one class too: a camera on one scene shows
  one class to both, a normalisation that collapses shows it to the adapted model alone.
- Harm: the updates have made the model worse. The reference is the model without them: θ
  as given, frozen, normalising test batches as the adapted model does and from its running
  statistics, so that it sees the same correction of the shift and differs only by what the
  gradient steps learned. With
  ``p`` the reference's probabilities, ``a`` the adapted and ``r`` the reference's
  predictions, the signal over a window of recent inputs is

      plausibility = Σ p[a] / Σ p[r]          (1 when the two agree everywhere)

  It needs no label and one forward pass without gradient, on one batch in ``harm_every``
  (``harm_due``). It tracks error because an update that helps keeps the predictions the
  reference already gets right (``p[a] = p[r]`` there) and, where it corrects the reference,
  moves to a class the reference still finds likely
  (its runner-up), so the ratio stays near 1; updates that drift into wrong classes or
  collapse onto a few move to classes the reference finds unlikely, and the ratio falls
  towards the reference's probability of a random class. (The source model with its own
  statistics is no reference: under a strong shift it is confidently wrong, and every
  correction would look implausible to it.) Below ``harm_min`` the state rolls back to
  ``source``: ``last-good`` may already be on the harmful path when the drift was slow.

``last-good`` trails the stream: a snapshot is promoted only after ``confirm_steps`` more
steps passed every check, so the state restored after an alarm predates the drift that
caused it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tta_cli.config import GuardConfig


@dataclass(frozen=True)
class Verdict:
    action: str  # "ok", "skip" or "rollback"
    reason: str = ""
    target: str = "last-good"
    """The alias a rollback returns to."""

    @property
    def ok(self) -> bool:
        return self.action == "ok"


OK = Verdict("ok")


class Guard:
    def __init__(self, config: GuardConfig, num_classes: int, compare_with_source: bool = False) -> None:
        self.config = config
        self.num_classes = num_classes
        self.compare_with_source = compare_with_source
        """Whether the one-class rule needs the source's predictions on the same inputs to be
        spread (methods without gradient steps)."""
        self.reset()

    def reset(self) -> None:
        """Forget the signals' history (after a rollback, the restored state starts afresh)."""
        self.entropy_ema: float | None = None
        self.recent_predictions: deque[int] = deque(maxlen=self.config.majority_window)
        self.source_predictions: deque[int] = deque(maxlen=self.config.majority_window)
        self.candidates: deque[tuple[int, str]] = deque()
        self.plausibility_window: deque[tuple[int, float, float]] = deque()
        self.plausibility_totals: list[float] = [0, 0.0, 0.0]  # inputs, Σ p[a], Σ p[r] over the window
        self.batches_since_scored: int | None = None

    @property
    def watches_harm(self) -> bool:
        """Whether ``observe`` wants the source model's probabilities."""
        return self.config.enabled and self.config.harm_min > 0

    def harm_due(self) -> bool:
        """Called once per batch: whether the reference scores it for the harm signal. The first
        batch after a reset, then one in ``harm_every``: the signal is a ratio over a window of
        inputs, which a sample of the batches estimates at a fraction of the cost."""
        since = self.batches_since_scored
        if since is None or since + 1 >= self.config.harm_every:
            self.batches_since_scored = 0
            return True
        self.batches_since_scored = since + 1
        return False

    def plausibility(self) -> float | None:
        """``Σ p[a] / Σ p[s]`` over the window, once the window is full."""
        count, adapted, source = self.plausibility_totals
        if count < self.config.harm_window:
            return None
        return adapted / source if source > 0 else 1.0

    def majority_fraction(self, predictions: deque[int] | None = None) -> float:
        """The share of the window's most frequent class (of the adapted model's predictions,
        or of ``predictions``)."""
        window = self.recent_predictions if predictions is None else predictions
        if not window:
            return 0.0
        counts = torch.bincount(torch.tensor(list(window)), minlength=self.num_classes)
        return counts.max().item() / len(window)

    def check_gradient(self, loss: float, gradient: torch.Tensor) -> Verdict:
        if not self.config.enabled:
            return OK
        if not math.isfinite(loss):
            return Verdict("skip", f"non-finite loss ({loss})")
        if not torch.isfinite(gradient).all():
            return Verdict("skip", "non-finite gradient")
        return OK

    def check_state(self, params: Sequence[torch.Tensor]) -> Verdict:
        if self.config.enabled and not all(torch.isfinite(param).all() for param in params):
            return Verdict("rollback", "non-finite parameter after the update")
        return OK

    def observe(
        self,
        predictions: torch.Tensor,
        entropy: torch.Tensor,
        reference_probabilities: torch.Tensor | None = None,
        source_predictions: torch.Tensor | None = None,
    ) -> Verdict:
        """Update the signals with one batch's (pre-update) outputs and, for the harm signal,
        the reference's probabilities on the same inputs; ``source_predictions``: the source
        model's on them, where the one-class rule compares with the source."""
        mean_entropy = entropy.mean().item()
        if self.config.enabled and not math.isfinite(mean_entropy):
            return Verdict("rollback", "non-finite predictions")
        self.recent_predictions.extend(predictions.tolist())
        if source_predictions is not None:
            self.source_predictions.extend(source_predictions.tolist())
        momentum = self.config.entropy_ema_momentum
        self.entropy_ema = (
            mean_entropy if self.entropy_ema is None else momentum * self.entropy_ema + (1 - momentum) * mean_entropy
        )
        if reference_probabilities is not None:
            self._observe_harm(predictions, reference_probabilities)
        if not self.config.enabled:
            return OK
        plausibility = self.plausibility() if self.watches_harm else None
        if plausibility is not None and plausibility < self.config.harm_min:
            return Verdict(
                "rollback",
                f"plausibility of the predictions to the un-updated model {plausibility:.2f} < {self.config.harm_min} "
                f"over the last {self.config.harm_window} inputs",
                target="source",
            )
        if self.entropy_ema < self.config.entropy_ema_min:
            return Verdict("rollback", f"entropy moving average {self.entropy_ema:.3f} < {self.config.entropy_ema_min}")
        return self._one_class()

    def _one_class(self) -> Verdict:
        window = self.config.majority_window
        majority = self.majority_fraction()
        if len(self.recent_predictions) < window or majority <= self.config.majority_max:
            return OK
        reason = f"one class took {majority:.0%} of the last {window} predictions (> {self.config.majority_max:.0%})"
        if not self.compare_with_source:
            return Verdict("rollback", reason)
        if len(self.source_predictions) < window:
            return OK  # not seen what the source made of the same inputs
        source = self.majority_fraction(self.source_predictions)
        if source > self.config.majority_max:
            return OK  # the stream shows one class: the source's predictions are one class too
        return Verdict("rollback", f"{reason}; the source's predictions of the same inputs: at most {source:.0%}")

    def _observe_harm(self, predictions: torch.Tensor, reference_probabilities: torch.Tensor) -> None:
        adapted = reference_probabilities.gather(1, predictions.view(-1, 1)).sum().item()
        reference = reference_probabilities.max(dim=1).values.sum().item()
        entry = (len(predictions), adapted, reference)
        self._shift_window(entry, +1)
        self.plausibility_window.append(entry)
        # Drop the oldest batches while the rest still fill the window.
        while self.plausibility_totals[0] - self.plausibility_window[0][0] >= self.config.harm_window:
            self._shift_window(self.plausibility_window.popleft(), -1)

    def _shift_window(self, entry: tuple[int, float, float], sign: int) -> None:
        for index, value in enumerate(entry):
            self.plausibility_totals[index] += sign * value

    def promote(self, step: int, snapshot_id: str | None) -> tuple[int, str] | None:
        """Register a healthy step's snapshot; return the one that is now confirmed good, if any."""
        if snapshot_id is not None:
            self.candidates.append((step, snapshot_id))
        confirmed = None
        while self.candidates and step - self.candidates[0][0] >= self.config.confirm_steps:
            confirmed = self.candidates.popleft()
        return confirmed
