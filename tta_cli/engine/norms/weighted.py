"""The "weighted" normalisation: robust BN whose rate is the weight a batch's statistics
deserve, and whose statistics do not stray from the source's without reason. Its mechanisms, each with a switch
in ``WeightedNormConfig`` (``run.toml``'s ``[adapt.weighted_norm]``):

**Rates** (always on). Statistics estimated from a batch are as good as the number of
independent images behind them. For a shuffled stream that is the batch size; for a folder
sorted by class, or a camera on one scene, consecutive batches are clusters, and a batch of 64
may say no more about the domain than a few images would. Survey statistics calls the factor
the *design effect*; it is measured on the input of the first BatchNorm layer, whose statistics
respond to the domain more than to the classes:

    ratio_t = mean over channels of (μ_t − μ_{t−1})² / (v_t + v_{t−1})

with ``μ_t`` the batch's mean and ``v_t`` its sampling variance (the variance of the per-image
means over the batch size). Independent batches of one domain give ratios near 1; the design
effect ``D`` is the median of the last ``window`` ratios (a change of domain is one outlying
ratio, not a trend), at least 1, and ``start`` before two batches were seen. The batch counts
as ``n / D`` images against ``prior`` images: ``rate = (n / D) / (n / D + prior)``.

**deep_gate.** The deeper half of the layers (in module order) holds statistics that depend on
which classes a batch holds, so it moves at ``rate · gate`` with
``gate = clamp((clustered − D) / (clustered − 1), 0, 1)``: as the shallow half at ``D = 1``,
not at all from ``D = clustered``.

**shrinkage.** On clustered batches an estimate that has moved by less than its own noise is
mostly the classes seen so far. Each layer tracks its estimate's error variance
``e ← (1 − rate)²·e + rate²·D·v`` per channel and normalises with the source's statistics plus
a positive-part James–Stein share of the estimate's departure,
``w = max(0, 1 − s · Σ e/σ²_src / Σ (μ − μ_src)²/σ²_src)``, ``s = shrinkage_factor · (1 − gate)``.

**jump.** A batch whose first-layer statistics lie further than ``near_source`` (the
divergence of a shift of the mean by one source standard deviation) from both the estimate's
and the source's shows more than the classes of a batch explain: a new domain. The estimates
restart from the batch's own statistics (rate 1 in the shallow half, ``gate`` in the deeper
half) instead of taking several batches to leave statistics that no longer describe the stream.

**return_on_fit.** When a batch's statistics at the first layer fit the source's better than
the estimate's (symmetric Kullback–Leibler divergence of per-channel Gaussians), the domain
turned back towards the source, and every estimate restarts from the source's.

**return_on_one_class.** A second look (one more forward, with the source's statistics). A
stream of one class (a camera on one scene) is a run of independent draws, so the design effect
does not flag it, and its statistics normalise the class away. When the source's statistics
predict more than ``one_class`` of the batch as one class (for few classes, more than twice a
class's share in an even spread) and the statistics in use make the predictions less confident
(higher mean entropy), the stream shows one class and the estimates are normalising it away;
the source's predict and every estimate restarts. A shift that makes the source collapse onto
one class, confidently (strong sensor noise, very low light), looks the same in the
predictions: confident is not correct. What tells them apart is each image: an image of one
scene is one of the source's kind, an image under strong noise is like none of them. So the
return needs the batch's median image typical of the source's at the shallow half of the
layers, as the second look normalises them (``tta_cli.models.typicality``: the limit leaves 99 %
of the source's own images typical, measured by ``prepare`` on the model's clean images). A
bundle prepared without it falls back on the batch's first-layer statistics within
``near_source`` of the source's, a constant chosen on the airnets that does not hold on a
pre-activation ResNet (docs/benchmarks.md, "What the suite says"). A shift that the source
answers with one class and the estimates correct leaves the estimates the more confident (shot
noise on the sample airnet). It replaced a return on any batch the source's statistics predict
more confidently by an entropy ratio, whose ratio was chosen on one network and which earned
nothing the one-class return does not (docs/benchmarks.md, "Fewer mechanisms").

**deferral.** The same second look measures how much the estimates change: the share of the
batch's predictions they leave as the source's make them and the ratio of mean entropies, both
averaged over batches (momentum ``smoothing``, restarting with the estimates). While more than
``agreement`` are unchanged and the entropy ratio stays above ``gain``, the shift is mild: the
source's statistics predict, without gradient steps, and the estimates keep following the stream.

What a layer normalises with is written to its ``running_mean`` and ``running_var``, so the
eval-mode model, an export and the history hold it. Only the forward that predicts a batch
moves the estimates; any other (a memory batch, a re-evaluation, eval mode) normalises with
what normalised the last batch predicted. The state (recent ratios, last batch's mean, rates,
every layer's estimate and error, the second look's averages) is part of every snapshot.
docs/benchmarks.md, "Real streams", has the measurements behind the constants.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections import deque
from collections.abc import Callable, Iterator
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta_cli.config import WeightedNormConfig
from tta_cli.engine.norms.base import Norm, Prediction
from tta_cli.engine.norms.layers import (
    gaussian_divergence,
    normalise,
    per_image,
    rate_of,
    reduced_dims,
    robust_forward,
    running_stats,
    store,
)
from tta_cli.errors import UsageError
from tta_cli.events import Event, EventKind
from tta_cli.models.typicality import Typicality, input_moments, shallow_layers
from tta_cli.objectives.entropy import entropy

FITS_SOURCE = "the batch fits them better"
ONE_CLASS = "they predict most of the batch as one class, more confidently"


class WeightedNorm(Norm):
    name = "weighted"
    layer_forward = robust_forward
    revisit_restores = False
    reference_reads_current = True

    def __init__(
        self,
        model: nn.Module,
        settings: WeightedNormConfig | None = None,
        typicality: Typicality | None = None,
    ) -> None:
        super().__init__(model)
        if not self.layers:
            raise UsageError('The model has no BatchNorm layer, so "weighted" has nothing to normalise.')
        self.settings = settings = settings or WeightedNormConfig()
        self.shallow = len(shallow_layers(model))
        self.ratios: deque[float] = deque(maxlen=settings.window)
        self.estimates = [
            _Estimate(self, layer, source) for layer, source in zip(self.layers, self.source_statistics, strict=True)
        ]
        self.watching = False
        self.deferral_noted = False
        """Whether the events last said the source's statistics predict on a mild shift; not
        part of the state, so that a reset or rollback does not note a deferral twice."""
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None
        self.design_effect = settings.start
        self.returns = 0
        self.returned = ""
        """Why the last batch seen sent the estimates back to the source's, if it did."""
        self.jumped = False
        """Whether the last batch seen lay so far from the statistics in use that its own replaced them."""
        self.agreement: float | None = None
        self.log_ratio: float | None = None
        """Moving averages of the second look's agreement and log entropy ratio."""
        self.deferring = False
        """Whether the last batch was predicted with the source's statistics on a mild shift."""
        self.source_divergence = 0.0
        """How far the last batch's first-layer statistics lay from the source's."""
        self.typicality = typicality
        self.moments: list[torch.Tensor] = []
        """The last batch's image moments at the shallow half as the source normalises it (in the
        second look: the deeper of these layers see what the layers before them normalised)."""
        self.recording = False
        self._hooks = [self.layers[0].register_forward_pre_hook(self._observe)]
        if typicality is not None and settings.return_on_one_class:
            if len(typicality.loc) != self.shallow:
                raise UsageError(
                    f"The bundle's typicality covers {len(typicality.loc)} BatchNorm layers, the model's shallow half "
                    f"has {self.shallow}; re-create the bundle with 'tta-cli prepare'."
                )
            self._hooks += [layer.register_forward_pre_hook(self._record) for layer in self.layers[: self.shallow]]

    @classmethod
    def create(
        cls, model: nn.Module, num_classes: int, weighted_norm: WeightedNormConfig, typicality: Typicality | None
    ) -> WeightedNorm:
        return cls(model, weighted_norm, typicality)

    @property
    def gate(self) -> float:
        """1 while batches are independent draws (D = 1), 0 from D = ``clustered``."""
        clustered = self.settings.clustered
        return min(1.0, max(0.0, (clustered - self.design_effect) / (clustered - 1)))

    @property
    def shrinkage(self) -> float:
        return self.settings.shrinkage_factor * (1 - self.gate) if self.settings.shrinkage else 0.0

    def predict(self, forward: Callable[[], torch.Tensor], look_again: Callable[[], torch.Tensor]) -> Prediction:
        with self.watch():
            logits = forward()
        prediction = self.second_look(look_again, logits)
        if self.returned:
            prediction.events.append(Event(EventKind.NORM_RETURN, self.returned))
        if self.jumped:
            prediction.events.append(Event(EventKind.NORM_JUMP, "the batch lay beyond the statistics in use"))
        if self.deferring != self.deferral_noted:
            self.deferral_noted = self.deferring
            if self.deferring:
                prediction.events.append(Event(EventKind.DEFER, "a mild shift: the source's statistics predict"))
            else:
                prediction.events.append(Event(EventKind.DEFER_END, "the stream's statistics predict again"))
        return prediction

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Within this block the first layer's input sets the rates and every layer's estimate
        moves: the forward that predicts a batch, not a second look at it or a memory batch."""
        self.watching = True
        try:
            yield
        finally:
            self.watching = False

    def _observe(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if self.watching:
            self.observe(inputs[0])

    def _record(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if self.recording:
            self.moments.append(input_moments(layer, inputs[0]))

    @property
    def looks_like_source(self) -> bool:
        """Whether the last batch predicted looks like the source's images at the shallow layers:
        its median image within the bundle's typicality limit, or for a bundle prepared without
        one, its first-layer statistics within ``near_source`` of the source's."""
        if self.typicality is not None and self.moments:
            return self.typicality.typical(self.moments)
        return self.source_divergence <= self.settings.near_source

    def observe(self, x: torch.Tensor) -> float:
        """Jump to ``x``'s statistics if they lie far from both the estimate's and the source's,
        else return to the source's if ``x`` fits them better; update the design effect with
        the first layer's input ``x`` and set every rate; returns the shallow half's rate."""
        with torch.no_grad():
            self.returned = ""
            self.source_divergence, estimate_divergence = self.estimates[0].divergences(x.detach())
            far = min(self.source_divergence, estimate_divergence) > self.settings.near_source
            self.jumped = self.settings.jump and far
            if self.settings.return_on_fit and not self.jumped and self.source_divergence < estimate_divergence:
                self._return(FITS_SOURCE)
            images = per_image(x)
            count = images.shape[0]
            mean = images.mean(dim=0)
            if count > 1:
                noise = images.var(dim=0) / count
                # A change of domain says nothing of how clustered the stream's batches are.
                if self.previous is not None and not self.jumped:
                    previous_mean, previous_noise = self.previous
                    tiny = torch.finfo(noise.dtype).tiny
                    ratio = (mean - previous_mean).square() / (noise + previous_noise + tiny)
                    self.ratios.append(float(ratio.mean()))
                self.previous = (mean, noise)
        if self.ratios:
            self.design_effect = max(1.0, statistics.median(self.ratios))
        effective = count / self.design_effect
        rate = 1.0 if self.jumped else effective / (effective + self.settings.prior)
        deep_rate = rate * self.gate if self.settings.deep_gate else rate
        for index, layer in enumerate(self.layers):
            # torch's stub types Module.__setattr__ for tensors and modules; plain attributes work.
            layer.smoothing_rate = rate if index < self.shallow else deep_rate  # type: ignore[assignment]
        return rate

    def second_look(self, look_again: Callable[[], torch.Tensor], logits: torch.Tensor) -> Prediction:
        """Predict with ``logits`` (the statistics in use) or with the source's statistics
        (``look_again`` runs the model on the batch once more), which the layers then hold."""
        settings = self.settings
        if not (settings.return_on_one_class or settings.deferral):
            return Prediction(logits)
        with torch.no_grad():
            used = [(mean.clone(), var.clone()) for mean, var in map(running_stats, self.layers)]
            for estimate in self.estimates:
                store(estimate.layer, *estimate.source, count=False)
            self.moments.clear()
            self.recording = True
            try:
                source_logits = look_again().detach()
            finally:
                self.recording = False
            used_entropy, source_entropy = float(entropy(logits).mean()), float(entropy(source_logits).mean())
            one_class = (
                settings.return_on_one_class and used_entropy > source_entropy and self._one_class(source_logits)
            )
            if one_class:
                # The averages restart with the estimates, from the next batch they predict;
                # whether a deferral goes on is for that batch to say.
                self._return(ONE_CLASS)
                self.agreement = self.log_ratio = None
                # The return says who predicts; a deferral after it is a new one.
                self.deferring = self.deferral_noted = False
            elif settings.deferral:
                if math.isfinite(used_entropy) and math.isfinite(source_entropy):
                    agreement = float((logits.argmax(dim=1) == source_logits.argmax(dim=1)).float().mean())
                    tiny = torch.finfo(torch.float32).tiny
                    self._follow(agreement, math.log((used_entropy + tiny) / (source_entropy + tiny)))
                self.deferring = self.mild
            if one_class:
                why_not = "the source's statistics predicted the batch"
                return Prediction(source_logits, learn=False, why_not=why_not, source_logits=source_logits)
            if self.deferring:
                return Prediction(source_logits, learn=False, source_logits=source_logits)
            for estimate, (mean, var) in zip(self.estimates, used, strict=True):
                store(estimate.layer, mean, var, count=False)
            return Prediction(logits, source_logits=source_logits)

    def _one_class(self, source_logits: torch.Tensor) -> bool:
        """Whether the source's statistics predict more than ``one_class`` of a batch that looks
        like the source's images as one class (for few classes, more than twice an even share)."""
        if not self.looks_like_source:
            return False
        share = float(torch.bincount(source_logits.argmax(dim=1)).max()) / len(source_logits)
        return share > max(self.settings.one_class, 2 / source_logits.shape[1])

    def _follow(self, agreement: float, log_ratio: float) -> None:
        """Move the second look's averages; they restart with the estimates."""
        if self.returned or self.agreement is None or self.log_ratio is None:
            self.agreement, self.log_ratio = agreement, log_ratio
            return
        momentum = self.settings.smoothing
        self.agreement = momentum * self.agreement + (1 - momentum) * agreement
        self.log_ratio = momentum * self.log_ratio + (1 - momentum) * log_ratio

    @property
    def mild(self) -> bool:
        """Whether the estimates change few predictions and make them no more confident."""
        if self.agreement is None or self.log_ratio is None:
            return False
        return self.agreement > self.settings.agreement and self.log_ratio > math.log(self.settings.gain)

    def _return(self, reason: str) -> None:
        self.returned = reason
        self.returns += 1
        for estimate in self.estimates:
            estimate.restart()

    def clear(self) -> None:
        """Start afresh: no batch seen, every estimate at the source's statistics."""
        self.ratios.clear()
        self.previous = None
        self.design_effect = self.settings.start
        self.returns = 0
        self.returned = ""
        self.jumped = False
        self.agreement = self.log_ratio = None
        self.deferring = False
        for layer, estimate in zip(self.layers, self.estimates, strict=True):
            layer.__dict__.pop("smoothing_rate", None)
            estimate.restart()

    def state_dict(self) -> dict[str, Any]:
        previous = {} if self.previous is None else {"mean": self.previous[0], "noise": self.previous[1]}
        return {
            "ratios": list(self.ratios),
            "previous": previous,
            "design_effect": self.design_effect,
            "returns": self.returns,
            "agreement": self.agreement,
            "log_ratio": self.log_ratio,
            "deferring": self.deferring,
            "rates": [rate_of(layer) for layer in self.layers],
            "estimates": [estimate.state_dict() for estimate in self.estimates],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clear()
        if not state:
            return
        self.ratios.extend(state["ratios"])
        # A snapshot's tensors arrive on the CPU.
        device = self.estimates[0].source[0].device
        if state["previous"]:
            self.previous = (state["previous"]["mean"].to(device), state["previous"]["noise"].to(device))
        self.design_effect = state["design_effect"]
        self.returns = state["returns"]
        self.agreement, self.log_ratio = state.get("agreement"), state.get("log_ratio")
        self.deferring = state.get("deferring", False)
        for layer, rate in zip(self.layers, state["rates"], strict=True):
            layer.smoothing_rate = rate
        for estimate, saved in zip(self.estimates, state["estimates"], strict=True):
            estimate.load_state_dict(saved)

    def close(self) -> None:
        """Give the layers back their plain smoothed forward."""
        for hook in self._hooks:
            hook.remove()
        for layer in self.layers:
            if "forward" in layer.__dict__:
                layer.forward = MethodType(robust_forward, layer)  # type: ignore[method-assign]


class _Estimate:
    """One layer's estimate of the domain's statistics (the running mean and variance it would
    have as robust BN), that estimate's error variance, and the source's statistics."""

    def __init__(self, norm: WeightedNorm, layer: _BatchNorm, source: dict[str, torch.Tensor]) -> None:
        if layer.running_mean is None or layer.running_var is None:
            raise UsageError('A BatchNorm layer keeps no running statistics, so "weighted" has none to smooth.')
        self.norm, self.layer = norm, layer
        self.source = (source["running_mean"], source["running_var"])
        self.restart()
        # Swapped on the instance on purpose (see ``layers``); Module.__call__ passes the input
        # positionally, so the parameter's name (x, not torch's input) does not matter.
        layer.forward = self.forward  # type: ignore[method-assign, assignment]

    def restart(self) -> None:
        self.mean, self.var = (value.clone() for value in self.source)
        self.error = torch.zeros_like(self.mean)

    def divergences(self, x: torch.Tensor) -> tuple[float, float]:
        """How far the batch's statistics lie from the source's, and from the estimate's."""
        var, mean = torch.var_mean(x, dim=reduced_dims(x), unbiased=False)
        source_mean, source_var = self.source
        return gaussian_divergence(mean, var, source_mean, source_var), gaussian_divergence(
            mean, var, self.mean, self.var
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if not layer.training or not self.norm.watching:
            # Eval mode, or a forward that is not the stream's: the statistics that normalised
            # the last batch predicted, which the layer's buffers hold.
            return F.batch_norm(x, *running_stats(layer), layer.weight, layer.bias, False, 0.0, layer.eps)
        batch_var, batch_mean = torch.var_mean(x, dim=reduced_dims(x), unbiased=False)
        rate = rate_of(layer)
        # The batch's share keeps its gradient, as in robust BN; at rate 1 (a jump) the estimate
        # is the batch's alone, even after one that left it non-finite.
        mean = batch_mean if rate == 1 else (1 - rate) * self.mean + rate * batch_mean
        var = batch_var if rate == 1 else (1 - rate) * self.var + rate * batch_var
        self.mean, self.var = mean.detach(), var.detach()
        weight = self._weight(x, rate)
        source_mean, source_var = self.source
        mean = source_mean + weight * (mean - source_mean)
        var = source_var + weight * (var - source_var)
        store(layer, mean, var)
        return normalise(layer, x, mean, var)

    def _weight(self, x: torch.Tensor, rate: float) -> torch.Tensor | float:
        """The James–Stein share of the new estimate's departure from the source's (a tensor on
        the layer's device, so that the forward pass does not wait for it)."""
        count = x.shape[0]
        if count > 1:
            noise = per_image(x).var(dim=0) / count
            self.error = (1 - rate) ** 2 * self.error + rate**2 * self.norm.design_effect * noise
        shrinkage = self.norm.shrinkage
        if shrinkage == 0:
            return 1.0
        source_mean, source_var = self.source
        scale = source_var + self.layer.eps
        departure = ((self.mean - source_mean).square() / scale).sum()
        expected = shrinkage * (self.error / scale).sum()
        # No departure: the source's statistics, unless nothing is uncertain either.
        return torch.where(departure > 0, (1 - expected / departure).clamp_min(0), (expected == 0).to(departure))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "error": self.error.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.source[0].device
        self.mean, self.var, self.error = (state[key].to(device, copy=True) for key in ("mean", "var", "error"))
