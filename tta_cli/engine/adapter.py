"""One adaptation step: predict, then (for methods that update) move θ.

0. back to the state before the first step, when RDumb's period says so or the batch's images
   fit the source's better than those θ has seen (``tta_cli.engine.returns``)
1. logits, features = model(x), normalised as the method's ``Norm`` says
2. predictions are taken here, before the update; the guard watches them (and, for its harm
   signal, the un-updated model's view of the same inputs)
3. losses = {name: objective(logits, features, batch)}, over the batch or, with a
   class-balanced memory, over the memory the batch was just offered to; with a weighting
   across domains (``tta_cli.engine.domains``) each input weighs as its cluster's share says
4. one gradient over θ per loss
5. g = harmonize(gradients) (or, on the steps between an amortized harmonizer's, the gradient
   of the losses weighted as it last weighed theirs: one backward pass)
6. θ ← update_rule(θ, g), with a closure that evaluates the same batch again at the current θ,
   from the same normalisation statistics, for rules that need the loss elsewhere (SAM)
7. guard: finite? collapsing? → skip or roll back

Each part is an object chosen by the method preset; the adapter knows none by name. An
objective that finds nothing to learn from a batch (no reliable sample) returns ``None``, and
the step then makes no update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from tta_cli.engine.domains import DomainClusters
from tta_cli.engine.guard import OK, Guard, Verdict
from tta_cli.engine.memory import ClassBalancedMemory
from tta_cli.engine.methods import Method
from tta_cli.engine.norms import Norm, Prediction
from tta_cli.engine.params import NORM_LAYERS, norm_affine_parameters, norm_buffers
from tta_cli.engine.returns import SourceReturn
from tta_cli.events import Event, EventKind
from tta_cli.harmonize import Harmonized, Harmonizer, Sum, conflict_diagnostics
from tta_cli.models.features import record_features
from tta_cli.objectives import Objective, entropy
from tta_cli.streams import UNLABELED, Batch
from tta_cli.update import Outcome, UpdateRule, flatten


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
    events: list[Event] = field(default_factory=list)
    """What the step did besides the usual: a reset to the source state, no update and why, ..."""

    @property
    def confidence(self) -> torch.Tensor:
        return self.probabilities.max(dim=1).values

    @property
    def predictions(self) -> torch.Tensor:
        return self.probabilities.argmax(dim=1)


class Adapter:
    """Owns the model while it adapts: its normalisation, θ, the objectives, the update rule
    and the guard."""

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        norm: Norm,
        objectives: list[Objective],
        update_rule: UpdateRule | None,
        feature_layers: list[str],
        guard: Guard,
        harmonizer: Harmonizer | None = None,
        reference: nn.Module | None = None,
        domains: DomainClusters | None = None,
        source_return: SourceReturn | None = None,
    ) -> None:
        """``norm`` has configured ``model`` (and ``reference``) already; ``reference`` is the
        guard's for its harm signal; ``domains`` weighs inputs by cluster; ``source_return`` sends
        the state back to the source's when the images turn back towards it
        (``tta_cli.engine.build`` makes all of them)."""
        self.model, self.method, self.norm, self.objectives = model, method, norm, objectives
        self.domains, self.source_return = domains, source_return
        self.update_rule, self.guard, self.harmonizer = update_rule, guard, harmonizer or Sum()
        self.named_params = norm_affine_parameters(model) if method.updates else {}
        self.params = list(self.named_params.values())
        model.requires_grad_(False)
        for param in self.params:
            param.requires_grad_(True)
        self.step_count = 0
        self.memory = ClassBalancedMemory(method.memory, guard.num_classes) if method.memory else None
        # The harm signal's reference: θ as given, frozen, normalising as the adapted model does
        # (see ``tta_cli.engine.guard``). Without gradient steps it would be the adapted model.
        self.reference = reference
        self.source_state: dict[str, Any] | None = None
        """What a reset returns to (RDumb's period, SAR's recovery): the state before the first step."""
        self._features: dict[str, torch.Tensor] = {}
        self._hooks = contextlib.ExitStack()
        if method.updates and feature_layers:
            self._features = self._hooks.enter_context(record_features(model, feature_layers))

    @property
    def learns(self) -> bool:
        return self.method.updates and self.update_rule is not None

    def step(self, batch: Batch) -> StepResult:
        self.step_count += 1
        events = self._reset_if_due() + self._return_if_fits(batch)
        # 1. Predict, as the normalisation says; the statistics the forward starts from are kept
        #    for the reference and for a second look at the batch.
        before = self._statistics() if self.method.updates else {}
        with torch.set_grad_enabled(self.learns and self.memory is None):
            prediction = self.norm.predict(lambda: self.model(batch.images), lambda: self._look_again(batch))
        logits = prediction.logits
        # 2. Predictions before the update; the guard watches them.
        result = StepResult(self.step_count, logits.detach().softmax(dim=1), entropy(logits.detach()))
        result.events = events + prediction.events
        self._watch(result, prediction, batch, before)
        if not self.learns or not result.verdict.ok:
            return result
        if not prediction.learn:
            result.events += [Event(EventKind.NO_UPDATE, prediction.why_not)] if prediction.why_not else []
            return result
        # 3. Losses, over the batch or the memory it joins, each input weighed by its cluster.
        if self.domains is not None:
            assignment = self.domains.weigh(batch.images, result.entropy)
            batch = replace(batch, weights=assignment.weights)
            result.diagnostics |= _cluster_diagnostics(assignment.clusters, self.domains.size)
        if self.memory is not None:
            batch, logits, before = self._memory_batch(batch, result)
        losses = self._losses(logits, batch, revisit=False)
        if isinstance(losses, str):
            result.events.append(Event(EventKind.NO_UPDATE, f"{losses} selected no sample"))
            return result
        result.losses = {name: loss.item() for name, loss in losses.items()}
        # 4-5. One gradient per loss, harmonized into one; or, between the harmonizations of an
        #      amortized harmonizer, the gradient of the losses weighted as the last one weighed.
        if (weights := self.harmonizer.reuse()) is None:
            gradients = self._per_loss_gradients(list(losses.values()))
            harmonized = self.harmonizer(gradients)
            result.diagnostics |= self._diagnostics(gradients, harmonized)
        else:
            weighted = sum(weight * loss for weight, loss in zip(weights.tolist(), losses.values(), strict=True))
            harmonized = Harmonized(self._per_loss_gradients([weighted])[0], weights)
        result.verdict = self.guard.check_gradient(sum(result.losses.values()), harmonized.gradient)
        if not result.verdict.ok:
            return result
        # 6. The update rule moves θ.
        assert self.update_rule is not None
        theta = torch.cat([param.detach().flatten() for param in self.params])
        outcome = self.update_rule.apply(self.params, harmonized.gradient, lambda: self._reevaluate(batch, before))
        if outcome.outcome is Outcome.RESET_TO_SOURCE:
            # The rule reset θ and itself; everything else that adapts goes back with them.
            if self.source_state is not None:
                self.load_state_dict(self.source_state)
            result.events.append(Event(EventKind.RESET, outcome.reason))
        elif outcome.outcome is Outcome.SKIPPED:
            result.events.append(Event(EventKind.NO_UPDATE, outcome.reason))
        result.update_norm = (torch.cat([param.detach().flatten() for param in self.params]) - theta).norm().item()
        # 7. The guard checks the new state.
        result.verdict = self.guard.check_state(self.params)
        return result

    def evaluate(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` as the model predicts now, with no step and every state left as it
        was (a probe of the adapted model; the memory, a cache of inputs, is emptied)."""
        state = self.state_dict()
        try:
            with torch.no_grad():
                return self.norm.predict(lambda: self.model(images), lambda: self.model(images)).logits
        finally:
            self.load_state_dict(state)

    def _reset_if_due(self) -> list[Event]:
        """RDumb's periodic return to the state before the first step (kept at the first step
        for any reset)."""
        if self.source_state is None:
            self.source_state = self.state_dict()
            return []
        period = self.method.reset_every
        if not period or (self.step_count - 1) % period:
            return []
        self.load_state_dict(self.source_state)
        return [Event(EventKind.RESET, f"every {period} steps")]

    def _return_if_fits(self, batch: Batch) -> list[Event]:
        """Back to the state before the first step when the batch's images fit the source's
        better than those seen since the last return (``tta_cli.engine.returns``); the batch
        joins the record of those seen either way (a batch without finite moments does not)."""
        if self.source_return is None or (moments := self.source_return.moments(batch.images)) is None:
            return []
        events = []
        if self.source_return.fits_source(moments):
            assert self.source_state is not None  # kept by ``_reset_if_due`` at the first step
            self.load_state_dict(self.source_state)
            events.append(
                Event(EventKind.RESET, "the images fit the source's better than those seen since the last return")
            )
        self.source_return.record(moments)
        return events

    def _watch(self, result: StepResult, prediction: Prediction, batch: Batch, before: dict[str, torch.Tensor]) -> None:
        """The guard's verdict on the predictions, with the reference's view of the batch (harm)
        and the source's (one class), and what it saw of them."""
        source = self._source_predictions(prediction, batch)
        reference = self._reference(batch, before)
        result.verdict = self.guard.observe(result.predictions, result.entropy, reference, source)
        if source is not None:
            result.diagnostics["source_majority"] = self.guard.majority_fraction(self.guard.source_predictions)
        if self.reference is not None and (plausibility := self.guard.plausibility()) is not None:
            result.diagnostics["plausibility"] = plausibility

    def _source_predictions(self, prediction: Prediction, batch: Batch) -> torch.Tensor | None:
        """The source model's predictions of the batch, where the guard compares with them."""
        if not (self.guard.config.enabled and self.guard.compare_with_source):
            return None
        logits = prediction.source_logits
        if logits is None:
            logits = self.norm.source_logits(lambda: self._look_again(batch))
        return logits.softmax(dim=1).argmax(dim=1)

    def _look_again(self, batch: Batch) -> torch.Tensor:
        """Another forward on the batch (a norm's second look) that leaves the features of the
        predicting forward in place."""
        features = dict(self._features)
        try:
            return self.model(batch.images)
        finally:
            self._features.update(features)

    def _reference(self, batch: Batch, before: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The harm signal's reference probabilities on the batch, normalising as the norm says:
        from the statistics the adapted model's forward started from, so that both see this
        batch once, or (in eval mode) with those that normalised it; on the batches the guard
        has it score (``Guard.harm_due``)."""
        if self.reference is None or not self.guard.harm_due():
            return None
        statistics = self._statistics() if self.norm.reference_reads_current else before
        with torch.no_grad():
            for name, buffer in norm_buffers(self.reference).items():
                buffer.copy_(statistics[name])
            return self.reference(batch.images).softmax(dim=1)

    def _memory_batch(self, batch: Batch, result: StepResult) -> tuple[Batch, torch.Tensor, dict[str, torch.Tensor]]:
        """Offer the batch to the memory; the memory's inputs, their logits, and the statistics
        that forward started from. Only the forward that predicted the batch moves the running
        statistics: the memory's forward normalises as the norm would, then leaves them as they were."""
        assert self.memory is not None
        self.memory.add(batch.images, result.predictions, result.entropy)
        images = self.memory.images()
        labels = torch.full((len(images),), UNLABELED, device=images.device)
        statistics = self._statistics()
        kept = self._statistics_kept() if self.norm.revisit_restores else contextlib.nullcontext()
        with torch.enable_grad(), kept:
            logits = self.model(images)
        weights = None
        if self.domains is not None:
            weights = self.domains.weigh(images, entropy(logits.detach()), learn=False).weights
        return Batch(["memory"] * len(images), images, labels, weights=weights), logits, statistics

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

        The normalisation starts again from ``statistics``, those the step's first forward
        started from (unless it moves nothing outside its predicting forward), and is left as
        that forward left it: a second look at the batch must not move the running statistics
        again, and with "robust" or "tbr" it must normalise as the first look did. The gradients
        are summed, not harmonized: a stateful harmonizer sees each step once.
        """
        after = self._statistics()
        if self.norm.revisit_restores:
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

    @contextlib.contextmanager
    def _statistics_kept(self) -> Iterator[None]:
        """A forward within this block normalises as the norm does and leaves the running
        statistics as they were: the layers hold copies for it (which its graph may keep)."""
        layers = [module for module in self.model.modules() if isinstance(module, NORM_LAYERS)]
        held = [dict(layer._buffers) for layer in layers]
        for layer, buffers in zip(layers, held, strict=True):
            layer._buffers.update({name: None if value is None else value.clone() for name, value in buffers.items()})
        try:
            yield
        finally:
            for layer, buffers in zip(layers, held, strict=True):
                layer._buffers.update(buffers)

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
            rows.append(flatten(grads, self.params))
        return torch.stack(rows)

    def _diagnostics(self, gradients: torch.Tensor, harmonized: Harmonized) -> dict[str, float]:
        if len(gradients) < 2:
            return {}
        diagnostics = conflict_diagnostics(gradients) | harmonized.diagnostics
        diagnostics |= {f"weight_{k + 1}": weight for k, weight in enumerate(harmonized.weights.tolist())}
        return diagnostics

    def state_dict(self) -> dict[str, Any]:
        """Everything that adapts: θ, normalisation running statistics and the norm's own state,
        the update rule's and the harmonizer's state, and what objectives carry between batches.
        (The memory is a cache of inputs, not state: ``tta_cli.engine.memory``.) With a weighting
        across domains, its clusters too; with θ's return, its record of the images seen since
        the last one (``tta_cli.engine.returns``)."""
        state = {
            "params": {name: param.detach().clone() for name, param in self.named_params.items()},
            "buffers": self._statistics(),
            "update_rule": self.update_rule.state_dict() if self.update_rule is not None else {},
            "harmonizer": self.harmonizer.state_dict(),
            "norm": self.norm.state_dict(),
            "objectives": {objective.name: objective.state_dict() for objective in self.objectives},
        }
        if self.domains is not None:
            state["domains"] = self.domains.state_dict()
        if self.source_return is not None:
            state["source_return"] = self.source_return.state_dict()
        return state

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
        self.norm.load_state_dict(state.get("norm", {}))
        objectives = state.get("objectives", {})
        for objective in self.objectives:
            objective.load_state_dict(objectives.get(objective.name, {}))
        if self.domains is not None:
            self.domains.load_state_dict(state.get("domains", {}))
        if self.source_return is not None:
            self.source_return.load_state_dict(state.get("source_return", {}))

    def close(self) -> None:
        self._hooks.close()
        self.norm.close()


def _cluster_diagnostics(clusters: torch.Tensor, total: int) -> dict[str, float]:
    """How many clusters the batch's inputs fell in, how many exist, and each one's count."""
    counts = torch.bincount(clusters.cpu(), minlength=total)
    sizes = {f"cluster_{index + 1}": float(count) for index, count in enumerate(counts.tolist()) if count}
    return {"clusters": float(len(sizes)), "clusters_total": float(total)} | sizes
