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

The smoothed statistics live in the layer's own ``running_mean`` and ``running_var`` (for
"tbr", ``running_var = σ_ema² − eps``), so snapshots, rollback, resume and export see them
with no change, and the eval-mode layer normalises with them: that eval-mode model is the
adapted model without its dependence on the batch, and it is what an export of such a run
holds. The layers are not replaced: in train mode their forward is swapped on the instance,
which keeps every state-dict key, and in eval mode they run BatchNorm's own forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MethodType

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tta_cli.errors import UsageError

NORMS = ("batch", "robust", "tbr", "balanced")
SMOOTHED = ("robust", "tbr", "balanced")
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
            layer.smoothing_rate = rate


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
