"""How BatchNorm normalises a test batch: with its own statistics, or with statistics that do
not trust one batch.

On a stream sorted by class or by time a batch holds one or two classes, and its statistics
say more about those classes than about the domain; normalising with them alone can end far
worse than not adapting (DELTA, RoTTA). Two remedies, both of which start from the source's
running statistics and move them slowly:

- "robust", RoTTA's robust BN (Yuan et al., CVPR 2023): ``μ ← (1−m)·μ + m·μ_b``,
  ``σ² ← (1−m)·σ² + m·σ²_b`` with ``m = 0.05`` and the batch's biased variance, then normalise
  with the new ``μ, σ²``; the batch's share keeps its gradient, as in RoTTA's ``RobustBN2d``.
  Here the forward that predicts a batch is the one that moves the statistics, as in DELTA;
  RoTTA's own code predicts with an eval-mode teacher and moves them while learning from its
  memory.
- "tbr", DELTA's test-time batch renormalisation (Zhao et al., ICLR 2023):
  ``x̂ = (x − μ_b)/σ_b · r + d`` with ``r = sg(σ_b)/σ_ema`` and ``d = (sg(μ_b) − μ_ema)/σ_ema``
  (``sg``: no gradient), then ``μ_ema, σ_ema`` move towards the batch's by ``m = 0.05``
  (DELTA's prior 0.95). In value ``x̂ = (x − μ_ema)/σ_ema``; in gradient it is batch
  normalisation. ``σ = sqrt(var + eps)`` throughout, as in DELTA's code. DELTA's code starts the
  moving averages at the first test batch (its source initialisation is commented out); here
  they start at the source's, so that step 0 is the source model.

- "weighted": robust BN whose rate is the weight a batch's statistics deserve (``StreamWeights``):
  the batch counts for its effective number of images, its size over the design effect of the
  stream (how much more consecutive batches differ than independent draws of the same domain
  would), against a prior of 64 images for the statistics it moves; layers in the deeper half
  of the network move only when the batches are independent draws, because their statistics
  carry the classes a correlated batch holds. On correlated batches a layer normalises with
  the source's statistics plus only the significant part of its estimate's departure from them,
  and a batch that fits the source's statistics better than the estimate, or is predicted more
  confidently with them, sends every estimate back to the source's. While the estimates change
  few predictions and make them no more confident (a mild shift), the source's statistics
  predict and the estimates follow the stream unused.

The smoothed statistics live in the layer's own ``running_mean`` and ``running_var`` (for
"tbr", ``running_var = σ_ema² − eps``), so snapshots, rollback, resume and export see them
with no change, and the eval-mode layer normalises with them: that eval-mode model is the
adapted model without its dependence on the batch, and it is what an export of such a run
holds. The layers are not replaced: in train mode their forward is swapped on the instance,
which keeps every state-dict key, and in eval mode they run BatchNorm's own forward.
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
from torch.nn.modules.batchnorm import _BatchNorm

from tta_cli.errors import UsageError
from tta_cli.objectives.entropy import entropy

NORMS = ("batch", "robust", "tbr", "balanced", "weighted")
SMOOTHED = ("robust", "tbr", "balanced", "weighted")
"""The norms that normalise with their running statistics, not with the batch's alone."""
MOMENTUM = 0.05
"""RoTTA's α, and 1 − DELTA's prior of 0.95, as their public code sets them."""
BALANCED_RATES = (0.05, 0.5)
"""The slowest and the fastest rate of "balanced" (see ``balanced_rate``)."""


def balanced_rate(predictions: list[int], num_classes: int, batches_seen: int = 0) -> float:
    """The smoothing rate of "balanced": robust BN whose rate follows how many classes recent
    inputs hold, judged by the model's own predictions.

    A window of recent predictions spread over the classes says the batches are a fair sample of
    the domain, and their statistics can be trusted almost as test-batch BN trusts them; a
    window of one or two classes (a sorted folder, a camera on one scene) says the opposite, and
    the rate falls to RoTTA's 0.05. With ``h`` the entropy of the window's class histogram over
    ``log C``: ``rate = 0.05 + 0.45 · max(0, (h − 0.5) / 0.5)²``.

    The first batches are averaged in at least at ``1 / (batches_seen + 2)``, as a running mean
    in which the source's statistics count as one batch: under a strong shift the source model
    predicts one or two classes, which alone would keep the rate at its slowest for good.
    """
    slow, fast = BALANCED_RATES
    warm = 1 / (batches_seen + 2)
    if not predictions or num_classes < 2:
        return max(slow, warm)
    counts = torch.bincount(torch.tensor(predictions), minlength=num_classes).float()
    share = counts[counts > 0] / counts.sum()
    spread = float(-(share * share.log()).sum()) / math.log(num_classes)
    return max(slow + (fast - slow) * max(0.0, (spread - 0.5) / 0.5) ** 2, warm)


def set_rate(model: torch.nn.Module, rate: float) -> None:
    """The rate at which the smoothed norms move towards each batch's statistics."""
    for layer in model.modules():
        if isinstance(layer, _BatchNorm):
            # torch's stub types Module.__setattr__ for tensors and modules; plain attributes work.
            layer.smoothing_rate = rate  # type: ignore[assignment]


FITS_SOURCE = "the batch fits them better"
LESS_CONFIDENT = "predictions with them are more confident"
CONFIDENCE_RATIO = 1.25
"""How many times the mean prediction entropy with the source's statistics the statistics in use
may give before "weighted" returns to the source's (``StreamWeights.second_look``)."""
AGREEMENT = 0.9
"""The share of a batch's predictions (moving average) above which the statistics in use leave
them as the source's make them: a mild shift, on which "weighted" defers to the source's
statistics unless it gains ``GAIN`` (``StreamWeights.second_look``)."""
GAIN = 0.98
"""The ratio of mean prediction entropies, statistics in use to the source's (moving average),
below which the statistics in use predict even on a mild shift."""
SMOOTHING = 0.8
"""Momentum of those two moving averages, over batches since the estimates last restarted."""
SHRINKAGE = 5.0
"""How many times its tracked error variance an estimate must depart from the source's before
"weighted" normalises with it in full, on clustered batches; chosen by measurement
(docs/benchmarks.md, "Real streams")."""


class StreamWeights:
    """The "weighted" norm: how far each batch moves each BatchNorm layer's statistics, and how
    far the statistics it normalises with may stray from the source's.

    **Rates.** Normalisation statistics estimated from a batch are as good as the number of
    independent images behind them. For a shuffled stream that is the batch size; for a folder
    sorted by class, or a camera on one scene, consecutive batches are clusters, and a batch of
    64 may say no more about the domain than a few images would. Survey statistics calls the
    factor the *design effect*; here it is measured on the input of the first BatchNorm layer,
    whose statistics respond to the domain more than to the classes:

        ratio_t = mean over channels of (μ_t − μ_{t−1})² / (v_t + v_{t−1})

    with ``μ_t`` the batch's mean, ``v_t`` its sampling variance (the variance of the per-image
    means over the batch size). Independent batches of one domain give ratios near 1; the design
    effect ``D`` is the median of the last ``window`` ratios (a change of domain is one outlying
    ratio, not a trend), at least 1, and ``start`` before two batches have been seen. The batch
    then counts as ``n / D`` images against ``prior`` images for the statistics it moves:

        rate = (n / D) / (n / D + prior)

    Layers in the first half (in module order) move their estimate at that rate. The deeper half
    holds statistics that depend on which classes a batch holds, so it moves only while batches
    are independent, at ``rate · gate`` with ``gate = clamp((clustered − D) / (clustered − 1), 0, 1)``:
    at ``D = 1`` as the shallow half, not at all from ``D = clustered``.

    **Shrinkage.** On clustered batches an estimate that has moved by less than its own noise
    is mostly the classes seen so far, not the domain. Each layer tracks the variance of its
    estimate's error, ``e ← (1 − rate)²·e + rate²·D·v`` per channel, and normalises with the
    source's statistics plus a positive-part James–Stein share of the estimate's departure:

        weight = max(0, 1 − shrinkage · Σ e/σ²_src / Σ (μ − μ_src)²/σ²_src)

    with ``shrinkage = SHRINKAGE · (1 − gate)``: none while batches are independent, full from
    ``D = clustered``. A mild shift under a sorted stream thus keeps the source's statistics.

    **Return.** When a batch's statistics at the first layer fit the source's better than the
    running estimate's (symmetric Kullback–Leibler divergence of per-channel Gaussians), the
    domain has changed back towards the source, and every estimate restarts from the source's
    (counted in ``returns``). A mild shift that follows a strong one is thus not normalised with
    the strong one's statistics. The same happens when the predictions with the statistics in
    use are less confident than with the source's by more than ``CONFIDENCE_RATIO`` in mean
    entropy (``second_look``, one more forward pass): a stream of one class.

    **Deferral.** The same second look also measures how much the estimates change: the share
    of the batch's predictions on which they agree with the source's, and the ratio of mean
    prediction entropies. Both are averaged over batches (momentum ``SMOOTHING``, restarting
    with the estimates). While the estimates agree on more than ``AGREEMENT`` of the
    predictions and do not bring the entropy below ``GAIN`` times the source's, the shift is
    mild: the source model already handles it, and the few predictions the estimates change
    are as likely wrong as right. The source's statistics then predict, the estimates keep
    following the stream, and there is no gradient step; the estimates predict again as soon
    as they change more or gain confidence. A strong shift changes many predictions (under
    impulse noise the source's are confident and mostly one class), so this holds there at
    most for the first batches after the estimates restart, while they are still near the source's.

    What a layer normalises with is written to its ``running_mean`` and ``running_var``, so the
    eval-mode model, an export and the history hold it. Only the forward pass that predicts a
    batch (inside ``watch``) moves the estimates; any other forward (a memory batch, a
    re-evaluation, eval mode) normalises with what normalised the last batch predicted.

    The state (recent ratios, last batch's mean, rates, every layer's estimate and error, the
    second look's averages) is part of every snapshot, so that the step after a rollback
    normalises as the step after the snapshot did.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        prior: float = 64.0,
        window: int = 8,
        start: float = 4.0,
        clustered: float = 2.0,
    ) -> None:
        self.layers = [layer for layer in model.modules() if isinstance(layer, _BatchNorm)]
        if not self.layers:
            raise UsageError('The model has no BatchNorm layer, so "weighted" has nothing to normalise.')
        self.shallow = math.ceil(len(self.layers) / 2)
        self.prior, self.start, self.clustered = prior, start, clustered
        self.ratios: deque[float] = deque(maxlen=window)
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None
        self.design_effect = start
        self.returns = 0
        self.returned = ""
        """Why the last batch seen sent the estimates back to the source's, if it did."""
        self.agreement: float | None = None
        self.log_ratio: float | None = None
        """Moving averages of the second look's agreement and log entropy ratio."""
        self.deferring = False
        """Whether the last batch was predicted with the source's statistics on a mild shift."""
        self.source_predicted = False
        """Whether the last batch was predicted with the source's statistics, for either reason."""
        self.streams = [_LayerStream(self, layer) for layer in self.layers]
        self._hook = self.layers[0].register_forward_pre_hook(self._observe)
        self.watching = False

    @property
    def gate(self) -> float:
        """1 while batches are independent draws (D = 1), 0 from D = ``clustered``."""
        return min(1.0, max(0.0, (self.clustered - self.design_effect) / (self.clustered - 1)))

    @property
    def shrinkage(self) -> float:
        return SHRINKAGE * (1 - self.gate)

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Within this block the first BatchNorm layer's input sets the rates and every layer's
        estimate moves: the forward pass that predicts a batch, not a second look at it or a
        memory batch."""
        self.watching = True
        try:
            yield
        finally:
            self.watching = False

    def _observe(self, layer: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if self.watching:
            self.observe(inputs[0])

    def observe(self, x: torch.Tensor) -> float:
        """Update the design effect with the first layer's input ``x``, return to the source's
        statistics if ``x`` fits them better, and set every rate; returns the shallow half's rate."""
        with torch.no_grad():
            per_image = _per_image(x)
            count = per_image.shape[0]
            mean = per_image.mean(dim=0)
            if count > 1:
                noise = per_image.var(dim=0) / count
                if self.previous is not None:
                    previous_mean, previous_noise = self.previous
                    tiny = torch.finfo(noise.dtype).tiny
                    ratio = (mean - previous_mean).square() / (noise + previous_noise + tiny)
                    self.ratios.append(float(ratio.mean()))
                self.previous = (mean, noise)
            self.returned = ""
            if self.streams[0].fits_source_better(x.detach()):
                self._return(FITS_SOURCE)
        if self.ratios:
            self.design_effect = max(1.0, statistics.median(self.ratios))
        effective = count / self.design_effect
        rate = effective / (effective + self.prior)
        for index, layer in enumerate(self.layers):
            # torch's stub types Module.__setattr__ for tensors and modules; plain attributes work.
            layer.smoothing_rate = rate if index < self.shallow else rate * self.gate  # type: ignore[assignment]
        return rate

    def second_look(self, forward: Callable[[], torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """The logits that predict the batch: ``logits``, those with the statistics in use, or
        those with the source's statistics (``forward`` runs the model on the batch again),
        which the layers' buffers then hold.

        The source's predict, and every estimate returns to the source's, when they make the
        predictions clearly more confident: a stream of one class (a camera on one scene) is a
        run of independent draws, so the design effect does not flag it, and its statistics
        normalise the class away, so that the predictions lose their confidence. Correcting a
        shift of the domain makes them more confident instead. The source's also predict, the
        estimates going on, on a mild shift (the class docstring's "Deferral").
        docs/benchmarks.md, "Real streams", has the measurements.
        """
        with torch.no_grad():
            used = [(mean.clone(), var.clone()) for mean, var in map(_running_stats, self.layers)]
            for layer, stream in zip(self.layers, self.streams, strict=True):
                _store_plain(layer, *stream.source)
            source_logits = forward().detach()
            used_entropy, source_entropy = float(entropy(logits).mean()), float(entropy(source_logits).mean())
            less_confident = used_entropy > CONFIDENCE_RATIO * source_entropy
            if less_confident:
                # The averages restart with the estimates, from the next batch they predict;
                # whether a deferral goes on is for that batch to say.
                self._return(LESS_CONFIDENT)
                self.agreement = self.log_ratio = None
            else:
                if math.isfinite(used_entropy) and math.isfinite(source_entropy):
                    agreement = float((logits.argmax(dim=1) == source_logits.argmax(dim=1)).float().mean())
                    tiny = torch.finfo(torch.float32).tiny
                    self._follow(agreement, math.log((used_entropy + tiny) / (source_entropy + tiny)))
                self.deferring = self.mild
            self.source_predicted = less_confident or self.deferring
            if self.source_predicted:
                return source_logits
            for layer, (mean, var) in zip(self.layers, used, strict=True):
                _store_plain(layer, mean, var)
            return logits

    def _follow(self, agreement: float, log_ratio: float) -> None:
        """Move the second look's averages; they restart with the estimates."""
        if self.returned or self.agreement is None or self.log_ratio is None:
            self.agreement, self.log_ratio = agreement, log_ratio
            return
        self.agreement = SMOOTHING * self.agreement + (1 - SMOOTHING) * agreement
        self.log_ratio = SMOOTHING * self.log_ratio + (1 - SMOOTHING) * log_ratio

    @property
    def mild(self) -> bool:
        """Whether the estimates change few predictions and make them no more confident."""
        if self.agreement is None or self.log_ratio is None:
            return False
        return self.agreement > AGREEMENT and self.log_ratio > math.log(GAIN)

    def _return(self, reason: str) -> None:
        self.returned = reason
        self.returns += 1
        for stream in self.streams:
            stream.restart()

    def clear(self) -> None:
        """Start afresh: no batch seen, every estimate at the source's statistics."""
        self.ratios.clear()
        self.previous = None
        self.design_effect = self.start
        self.returns = 0
        self.returned = ""
        self.agreement = self.log_ratio = None
        self.deferring = self.source_predicted = False
        for layer, stream in zip(self.layers, self.streams, strict=True):
            layer.__dict__.pop("smoothing_rate", None)
            stream.restart()

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
            "rates": [_rate(layer) for layer in self.layers],
            "estimates": [stream.state_dict() for stream in self.streams],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; an empty dict starts afresh."""
        self.clear()
        if not state:
            return
        self.ratios.extend(state["ratios"])
        if state["previous"]:
            self.previous = (state["previous"]["mean"].clone(), state["previous"]["noise"].clone())
        self.design_effect = state["design_effect"]
        self.returns = state["returns"]
        self.agreement, self.log_ratio = state.get("agreement"), state.get("log_ratio")
        self.deferring = state.get("deferring", False)
        for layer, rate in zip(self.layers, state["rates"], strict=True):
            layer.smoothing_rate = rate
        for stream, estimate in zip(self.streams, state["estimates"], strict=True):
            stream.load_state_dict(estimate)

    def close(self) -> None:
        """Give the layers back their plain smoothed forward."""
        self._hook.remove()
        for layer in self.layers:
            if "forward" in layer.__dict__:
                layer.forward = MethodType(robust_forward, layer)  # type: ignore[method-assign]


class _LayerStream:
    """One BatchNorm layer under "weighted": its estimate of the domain's statistics (the
    running mean and variance it would have as robust BN), that estimate's error variance, and
    the source's statistics it shrinks towards."""

    def __init__(self, owner: StreamWeights, layer: _BatchNorm) -> None:
        if layer.running_mean is None or layer.running_var is None:
            raise UsageError('A BatchNorm layer keeps no running statistics, so "weighted" has none to smooth.')
        self.owner, self.layer = owner, layer
        self.source = (layer.running_mean.detach().clone(), layer.running_var.detach().clone())
        self.restart()
        if layer.__dict__.get("forward") is not None:
            # Swapped on the instance on purpose (see the module docstring); Module.__call__ passes
            # the input positionally, so the parameter's name (x, not torch's input) does not matter.
            layer.forward = self.forward  # type: ignore[method-assign, assignment]

    def restart(self) -> None:
        self.mean, self.var = (value.clone() for value in self.source)
        self.error = torch.zeros_like(self.mean)

    def fits_source_better(self, x: torch.Tensor) -> bool:
        var, mean = torch.var_mean(x, dim=_reduced_dims(x), unbiased=False)
        source_mean, source_var = self.source
        return _divergence(mean, var, source_mean, source_var) < _divergence(mean, var, self.mean, self.var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if not layer.training or not self.owner.watching:
            # Eval mode, or a forward that is not the stream's: the statistics that normalised
            # the last batch predicted, which the layer's buffers hold.
            return F.batch_norm(
                x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps
            )
        batch_var, batch_mean = torch.var_mean(x, dim=_reduced_dims(x), unbiased=False)
        rate = _rate(layer)
        # The batch's share keeps its gradient, as in robust BN.
        mean = (1 - rate) * self.mean + rate * batch_mean
        var = (1 - rate) * self.var + rate * batch_var
        self.mean, self.var = mean.detach(), var.detach()
        weight = self._weight(x, rate)
        source_mean, source_var = self.source
        mean = source_mean + weight * (mean - source_mean)
        var = source_var + weight * (var - source_var)
        _store(layer, mean, var)
        shape = _channel_shape(x)
        return _affine(layer, (x - mean.view(shape)) / torch.sqrt(var.view(shape) + layer.eps))

    def _weight(self, x: torch.Tensor, rate: float) -> torch.Tensor | float:
        """The James–Stein share of the new estimate's departure from the source's (a tensor on
        the layer's device, so that the forward pass does not wait for it)."""
        count = x.shape[0]
        if count > 1:
            noise = _per_image(x).var(dim=0) / count
            self.error = (1 - rate) ** 2 * self.error + rate**2 * self.owner.design_effect * noise
        if self.owner.shrinkage == 0:
            return 1.0
        source_mean, source_var = self.source
        scale = source_var + self.layer.eps
        departure = ((self.mean - source_mean).square() / scale).sum()
        expected = self.owner.shrinkage * (self.error / scale).sum()
        # No departure: the source's statistics, unless nothing is uncertain either.
        return torch.where(departure > 0, (1 - expected / departure).clamp_min(0), (expected == 0).to(departure))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "error": self.error.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.mean, self.var, self.error = (state[key].clone() for key in ("mean", "var", "error"))


def _running_stats(layer: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's running mean and variance; every layer "weighted" holds keeps them
    (``_LayerStream`` refuses one that does not), so their absence here is a bug."""
    if layer.running_mean is None or layer.running_var is None:
        raise RuntimeError('A BatchNorm layer under "weighted" lost its running statistics.')
    return layer.running_mean, layer.running_var


def _store_plain(layer: _BatchNorm, mean: torch.Tensor, var: torch.Tensor) -> None:
    assert layer.running_mean is not None and layer.running_var is not None
    layer.running_mean.copy_(mean)
    layer.running_var.copy_(var)


def _per_image(x: torch.Tensor) -> torch.Tensor:
    """Each image's mean per channel, ``N×C``."""
    x = x.detach()
    return x.flatten(2).mean(dim=2) if x.dim() > 2 else x


def _divergence(mean: torch.Tensor, var: torch.Tensor, other_mean: torch.Tensor, other_var: torch.Tensor) -> float:
    """Symmetric Kullback–Leibler divergence between per-channel Gaussians, averaged over channels."""
    tiny = torch.finfo(var.dtype).tiny
    var, other_var = var + tiny, other_var + tiny
    spread = var / other_var + other_var / var - 2
    offset = (mean - other_mean).square() * (1 / var + 1 / other_var)
    return float((spread + offset).mean() / 4)


def _rate(layer: _BatchNorm) -> float:
    return getattr(layer, "smoothing_rate", MOMENTUM)


def use_norm(model: torch.nn.Module, norm: str | None) -> None:
    """Put every BatchNorm layer of ``model`` in the state ``norm`` needs: ``None`` for eval mode
    with the stored statistics, otherwise train mode normalising test batches as ``norm`` says.

    Whatever an earlier call set is undone first, so a model can be configured again.
    """
    if norm is not None and norm not in NORMS:
        raise UsageError(f"Unknown normalisation {norm!r}; choose one of {', '.join(NORMS)}.")
    for name, layer in model.named_modules():
        if not isinstance(layer, _BatchNorm):
            continue
        layer.__dict__.pop("forward", None)
        layer.__dict__.pop("smoothing_rate", None)
        layer.train(norm is not None)
        if norm in SMOOTHED:
            if layer.running_mean is None or layer.running_var is None:
                raise UsageError(
                    f"BatchNorm layer {name!r} keeps no running statistics, so {norm!r} has none to smooth; "
                    "use --norm batch."
                )
            layer.forward = MethodType(_FORWARDS[norm], layer)  # type: ignore[method-assign]


def robust_forward(layer: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """RoTTA's robust BN: normalise with the smoothed statistics after this batch's update."""
    if not layer.training:
        return type(layer).forward(layer, x)
    assert layer.running_mean is not None and layer.running_var is not None
    batch_var, batch_mean = torch.var_mean(x, dim=_reduced_dims(x), unbiased=False)
    rate = _rate(layer)
    mean = (1 - rate) * layer.running_mean + rate * batch_mean
    var = (1 - rate) * layer.running_var + rate * batch_var
    _store(layer, mean, var)
    shape = _channel_shape(x)
    return _affine(layer, (x - mean.view(shape)) / torch.sqrt(var.view(shape) + layer.eps))


def tbr_forward(layer: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """DELTA's test-time batch renormalisation, then the moving averages' update."""
    if not layer.training:
        return type(layer).forward(layer, x)
    assert layer.running_mean is not None and layer.running_var is not None
    batch_var, batch_mean = torch.var_mean(x, dim=_reduced_dims(x), unbiased=False)
    batch_std = torch.sqrt(batch_var + layer.eps)
    ema_mean, ema_std = layer.running_mean, torch.sqrt(layer.running_var + layer.eps)
    r = batch_std.detach() / ema_std
    d = (batch_mean.detach() - ema_mean) / ema_std
    shape = _channel_shape(x)
    normalised = (x - batch_mean.view(shape)) / batch_std.view(shape) * r.view(shape) + d.view(shape)
    rate = _rate(layer)
    std = (1 - rate) * ema_std + rate * batch_std
    # σ ≥ sqrt(eps) keeps the variance non-negative; clamped for rounding at σ = sqrt(eps).
    _store(layer, (1 - rate) * ema_mean + rate * batch_mean, (std.square() - layer.eps).clamp_min(0))
    return _affine(layer, normalised)


_FORWARDS: dict[str, Callable[[_BatchNorm, torch.Tensor], torch.Tensor]] = {
    "robust": robust_forward,
    "tbr": tbr_forward,
    "balanced": robust_forward,
    "weighted": robust_forward,
}


def _store(layer: _BatchNorm, mean: torch.Tensor, var: torch.Tensor) -> None:
    assert layer.running_mean is not None and layer.running_var is not None
    with torch.no_grad():
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
        if layer.num_batches_tracked is not None:
            layer.num_batches_tracked.add_(1)


def _affine(layer: _BatchNorm, normalised: torch.Tensor) -> torch.Tensor:
    if layer.weight is None or layer.bias is None:
        return normalised
    shape = _channel_shape(normalised)
    return normalised * layer.weight.view(shape) + layer.bias.view(shape)


def _reduced_dims(x: torch.Tensor) -> list[int]:
    """Every axis but the channels' (axis 1): ``N×C``, ``N×C×L``, ``N×C×H×W`` ..."""
    return [0, *range(2, x.dim())]


def _channel_shape(x: torch.Tensor) -> list[int]:
    return [1, -1] + [1] * (x.dim() - 2)
