"""One adaptation step: predict, then (for methods that update) move θ.

1. logits, features = model(x)
2. predictions are taken here, before the update; the guard watches them (and, for its harm
   signal, the un-updated model's view of the same inputs)
3. losses = {name: objective(logits, features, batch)}, over the batch or, with a
   class-balanced memory, over the memory the batch was just offered to
4. one gradient over θ per loss
5. g = harmonize(gradients)
6. θ ← update_rule(θ, g), with a closure that evaluates the same batch again at the current θ,
   from the same normalisation statistics, for rules that need the loss elsewhere (SAM)
7. guard: finite? collapsing? → skip or roll back

An objective that finds nothing to learn from a batch (no reliable sample) returns ``None``,
and the step then makes no update.
"""

from __future__ import annotations

import contextlib
import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tta_cli.engine.guard import OK, Guard, Verdict
from tta_cli.engine.memory import ClassBalancedMemory
from tta_cli.engine.methods import Method
from tta_cli.engine.norms import LESS_CONFIDENT, StreamWeights, balanced_rate, set_rate, use_norm
from tta_cli.engine.params import configure_model, norm_affine_parameters, norm_buffers
from tta_cli.harmonize import Harmonized, Harmonizer, Sum, conflict_diagnostics
from tta_cli.models.features import record_features
from tta_cli.objectives import Objective, entropy
from tta_cli.streams import UNLABELED, Batch
from tta_cli.update import RESET_TO_SOURCE, UpdateRule

BALANCED_WINDOW = 64
"""Recent predictions whose class spread sets the rate of the "balanced" norm."""
RETURN_NOTE = "normalisation statistics back to the source's"
"""The note of a step at which "weighted" saw the domain turn back towards the source."""
DEFER_NOTE = "a mild shift: the source's statistics predict, without gradient steps"
RESUME_NOTE = "the stream's statistics predict again"
"""The notes of the steps at which "weighted" starts and stops deferring to the source's statistics."""


@dataclass
class StepResult:
    """What one step saw and did. ``probabilities`` are from before the update."""

    step: int
    probabilities: torch.Tensor
    entropy: torch.Tensor
    losses: dict[str, float] = field(default_factory=dict)
    update_norm: float = 0.0
    verdict: Verdict = OK
    diagnostics: dict[str, float] = field(default_factory=dict)
    note: str = ""
    """What the update did besides the usual, e.g. "no update" or a reset to the source state."""

    @property
    def confidence(self) -> torch.Tensor:
        return self.probabilities.max(dim=1).values

    @property
    def predictions(self) -> torch.Tensor:
        return self.probabilities.argmax(dim=1)


class Adapter:
    """Owns the model while it adapts: its mode, θ, the objectives, the update rule and the guard."""

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        objectives: list[Objective],
        update_rule: UpdateRule | None,
        feature_layers: list[str],
        guard: Guard,
        harmonizer: Harmonizer | None = None,
    ) -> None:
        self.model = model
        self.method = method
        self.objectives = objectives
        self.update_rule = update_rule
        self.guard = guard
        self.harmonizer = harmonizer or Sum()
        self.named_params = norm_affine_parameters(model) if method.updates else {}
        self.params = list(self.named_params.values())
        configure_model(model, method.batch_statistics, self.params, method.norm)
        self.step_count = 0
        self.memory = ClassBalancedMemory(method.memory, guard.num_classes) if method.memory else None
        # The harm signal's reference: θ as given, frozen, normalising as the adapted model does
        # (see ``tta_cli.engine.guard``). Without gradient steps it would be the adapted model.
        watches_harm = guard.watches_harm and method.updates
        self.reference = copy.deepcopy(model).requires_grad_(False) if watches_harm else None
        self.recent_predictions: deque[int] | None = None
        if method.batch_statistics and method.norm == "balanced":
            self.recent_predictions = deque(maxlen=BALANCED_WINDOW)
        self.balanced_batches = 0
        self.stream_weights: StreamWeights | None = None
        if method.batch_statistics and method.norm == "weighted":
            self.stream_weights = StreamWeights(model)
            if self.reference is not None:
                use_norm(self.reference, None)
        self.source_state: dict[str, Any] | None = None
        """What a reset returns to (RDumb's period, SAR's recovery): the state before the first step."""
        self._features: dict[str, torch.Tensor] = {}
        self._hooks = contextlib.ExitStack()
        if method.updates and feature_layers:
            self._features = self._hooks.enter_context(record_features(model, feature_layers))

    def step(self, batch: Batch) -> StepResult:
        self.step_count += 1
        # Before a reset, which ends a deferral without a step to note it.
        deferred = self.stream_weights is not None and self.stream_weights.deferring
        reset = self._reset_if_due()
        if self.recent_predictions is not None:
            rate = balanced_rate(list(self.recent_predictions), self.guard.num_classes, self.balanced_batches)
            self.balanced_batches += 1
            set_rate(self.model, rate)
            if self.reference is not None:
                set_rate(self.reference, rate)
        statistics = self._statistics() if self.method.updates or self.reference is not None else {}
        watch = self.stream_weights.watch() if self.stream_weights is not None else contextlib.nullcontext()
        with watch, torch.set_grad_enabled(self.method.updates and self.memory is None):
            logits = self.model(batch.images)
        if self.stream_weights is not None:
            features = dict(self._features)  # the second look's forward records its own
            logits = self.stream_weights.second_look(lambda: self.model(batch.images), logits)
            self._features.update(features)
        result = StepResult(
            step=self.step_count,
            probabilities=logits.detach().softmax(dim=1),
            entropy=entropy(logits.detach()),
            note=reset,
        )
        if self.recent_predictions is not None:
            self.recent_predictions.extend(result.predictions.tolist())
        returned = self.stream_weights.returned if self.stream_weights is not None else ""
        if returned:
            result.note = "; ".join(filter(None, (result.note, f"{RETURN_NOTE}: {returned}")))
        if self.stream_weights is not None and self.stream_weights.deferring != deferred:
            switch = DEFER_NOTE if self.stream_weights.deferring else RESUME_NOTE
            result.note = "; ".join(filter(None, (result.note, switch)))
        reference_probabilities = self._reference_probabilities(batch, statistics)
        result.verdict = self.guard.observe(result.predictions, result.entropy, reference_probabilities)
        plausibility = self.guard.plausibility() if self.reference is not None else None
        if plausibility is not None:
            result.diagnostics["plausibility"] = plausibility
        if not self.method.updates or self.update_rule is None or not result.verdict.ok:
            return result
        if returned == LESS_CONFIDENT:
            result.note = f"{result.note}; no update"
            return result
        if self.stream_weights is not None and self.stream_weights.source_predicted:
            return result  # the source's statistics predicted: the step has nothing to learn from
        if self.memory is not None:
            self.memory.add(batch.images, result.predictions, result.entropy)
            images = self.memory.images()
            batch = Batch(["memory"] * len(images), images, torch.full((len(images),), UNLABELED, device=images.device))
            statistics = self._statistics()
            with torch.enable_grad():
                logits = self.model(batch.images)
        losses = self._losses(logits, batch, revisit=False)
        if isinstance(losses, str):
            result.note = "; ".join(filter(None, (result.note, f"{losses} selected no sample; no update")))
            return result
        result.losses = {name: loss.item() for name, loss in losses.items()}
        gradients = self._per_loss_gradients(list(losses.values()))
        harmonized = self.harmonizer(gradients)
        gradient = harmonized.gradient
        result.diagnostics |= self._diagnostics(gradients, harmonized)
        result.verdict = self.guard.check_gradient(sum(result.losses.values()), gradient)
        if not result.verdict.ok:
            return result
        before = torch.cat([param.detach().flatten() for param in self.params])
        note = self.update_rule.apply(self.params, gradient, closure=lambda: self._reevaluate(batch, statistics))
        if note.startswith(RESET_TO_SOURCE) and self.source_state is not None:
            # The rule reset θ and itself; the normalisation statistics go back with them.
            self.load_state_dict(self.source_state)
        result.note = "; ".join(filter(None, (result.note, note)))
        after = torch.cat([param.detach().flatten() for param in self.params])
        result.update_norm = (after - before).norm().item()
        result.verdict = self.guard.check_state(self.params)
        return result

    def _reset_if_due(self) -> str:
        """RDumb's periodic return to the state before the first step (kept at the first step
        for any reset); a note when it happens."""
        if self.source_state is None:
            self.source_state = self.state_dict()
            return ""
        period = self.method.reset_every
        if not period or (self.step_count - 1) % period:
            return ""
        self.load_state_dict(self.source_state)
        return f"{RESET_TO_SOURCE} (every {period} steps)"

    def _reference_probabilities(self, batch: Batch, statistics: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The harm signal's reference on the batch, normalising from the statistics the
        adapted model's forward started from, so that both see this batch once."""
        if self.reference is None:
            return None
        if self.stream_weights is not None:
            # "weighted" wrote what normalised this batch into the buffers; the reference runs
            # in eval mode on exactly those.
            statistics = self._statistics()
        with torch.no_grad():
            for name, buffer in norm_buffers(self.reference).items():
                buffer.copy_(statistics[name])
            return self.reference(batch.images).softmax(dim=1)

    def _losses(self, logits: torch.Tensor, batch: Batch, revisit: bool) -> dict[str, torch.Tensor] | str:
        """Each objective's loss, or the name of the first objective that found nothing to learn from."""
        losses = {}
        for objective in self.objectives:
            loss = objective(logits, self._features, batch, revisit=revisit)
            if loss is None:
                return objective.name
            losses[objective.name] = loss
        return losses

    def _reevaluate(self, batch: Batch, statistics: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor] | None:
        """The closure handed to the update rule: the batch's loss and gradient at the current θ.

        BatchNorm starts again from ``statistics``, those the step's first forward started from,
        and is left as that forward left it: a second look at the batch must not move the running
        statistics again, and with "robust" or "tbr" it must normalise as the first look did.
        ("weighted" moves nothing outside the first look, and normalises with what it wrote.)
        The gradients are summed, not harmonized: a stateful harmonizer sees each step once.
        """
        after = self._statistics()
        if self.stream_weights is None:
            self._load_statistics(statistics)
        try:
            with torch.enable_grad():
                logits = self.model(batch.images)
                losses = self._losses(logits, batch, revisit=True)
                if isinstance(losses, str):
                    return None
                gradient = self._per_loss_gradients(list(losses.values())).sum(dim=0)
                return sum(loss.item() for loss in losses.values()), gradient
        finally:
            self._load_statistics(after)

    def _statistics(self) -> dict[str, torch.Tensor]:
        return {name: buffer.clone() for name, buffer in norm_buffers(self.model).items()}

    def _load_statistics(self, statistics: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            buffers = norm_buffers(self.model)
            for name, value in statistics.items():
                buffers[name].copy_(value)

    def _per_loss_gradients(self, losses: list[torch.Tensor]) -> torch.Tensor:
        """A ``K × |θ|`` stack: one backward pass per loss through the shared graph."""
        rows = []
        for index, loss in enumerate(losses):
            grads = torch.autograd.grad(loss, self.params, retain_graph=index < len(losses) - 1, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).flatten()
                        for g, p in zip(grads, self.params, strict=True)
                    ]
                )
            )
        return torch.stack(rows)

    def _diagnostics(self, gradients: torch.Tensor, harmonized: Harmonized) -> dict[str, float]:
        if len(gradients) < 2:
            return {}
        diagnostics = conflict_diagnostics(gradients) | harmonized.diagnostics
        diagnostics |= {f"weight_{k + 1}": weight for k, weight in enumerate(harmonized.weights.tolist())}
        return diagnostics

    def state_dict(self) -> dict[str, Any]:
        """Everything that adapts: θ, normalisation running statistics, the update rule's state,
        and what sets the rate of the "weighted" norm."""
        return {
            "params": {name: param.detach().clone() for name, param in self.named_params.items()},
            "buffers": self._statistics(),
            "update_rule": self.update_rule.state_dict() if self.update_rule is not None else {},
            "harmonizer": self.harmonizer.state_dict(),
            "norm": self.stream_weights.state_dict() if self.stream_weights is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` exactly; the step counter keeps counting forward."""
        with torch.no_grad():
            for name, value in state["params"].items():
                self.named_params[name].copy_(value)
        self._load_statistics(state["buffers"])
        if self.update_rule is not None:
            self.update_rule.load_state_dict(state["update_rule"])
        self.harmonizer.reset()
        self.harmonizer.load_state_dict(state.get("harmonizer", {}))
        if self.memory is not None:
            self.memory.clear()
        if self.recent_predictions is not None:
            self.recent_predictions.clear()
            self.balanced_batches = 0
        if self.stream_weights is not None:
            self.stream_weights.load_state_dict(state.get("norm", {}))

    def close(self) -> None:
        self._hooks.close()
        if self.stream_weights is not None:
            self.stream_weights.close()
