"""The normalisations without state of their own beyond the layers' running statistics.

- "source": eval mode, the source's statistics (methods that do not adapt them).
- "batch": each test batch's own statistics (Tent's test-time BN); the running statistics
  still follow the stream, unused by the forward, for snapshots and exports.
- "robust", RoTTA's robust BN (Yuan et al., CVPR 2023): ``μ ← (1−m)·μ + m·μ_b``,
  ``σ² ← (1−m)·σ² + m·σ²_b`` with ``m = 0.05`` and the batch's biased variance, then normalise
  with the new ``μ, σ²``; the batch's share keeps its gradient, as in RoTTA's ``RobustBN2d``.
  Here the forward that predicts a batch is the one that moves the statistics, as in DELTA;
  RoTTA's own code predicts with an eval-mode teacher and moves them while learning from its memory.
- "tbr", DELTA's test-time batch renormalisation (Zhao et al., ICLR 2023):
  ``x̂ = (x − μ_b)/σ_b · r + d`` with ``r = sg(σ_b)/σ_ema`` and ``d = (sg(μ_b) − μ_ema)/σ_ema``
  (``sg``: no gradient), then ``μ_ema, σ_ema`` move towards the batch's by ``m = 0.05``
  (DELTA's prior 0.95). In value ``x̂ = (x − μ_ema)/σ_ema``; in gradient it is batch
  normalisation. ``σ = sqrt(var + eps)`` throughout, as in DELTA's code. DELTA's code starts the
  moving averages at the first test batch (its source initialisation is commented out); here
  they start at the source's, so that step 0 is the source model.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tta_cli.engine.norms.base import Norm
from tta_cli.engine.norms.layers import affine, rate_of, reduced_dims, robust_forward, running_stats, store


class SourceNorm(Norm):
    name = "source"
    train = False
    smoothed = False


class BatchStatistics(Norm):
    name = "batch"
    smoothed = False


class RobustNorm(Norm):
    name = "robust"
    layer_forward = robust_forward


def tbr_forward(layer: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """DELTA's test-time batch renormalisation, then the moving averages' update."""
    if not layer.training:
        return type(layer).forward(layer, x)
    running_mean, running_var = running_stats(layer)
    batch_var, batch_mean = torch.var_mean(x, dim=reduced_dims(x), unbiased=False)
    batch_std = torch.sqrt(batch_var + layer.eps)
    ema_mean, ema_std = running_mean, torch.sqrt(running_var + layer.eps)
    r = batch_std.detach() / ema_std
    d = (batch_mean.detach() - ema_mean) / ema_std
    shape = [1, -1] + [1] * (x.dim() - 2)
    normalised = (x - batch_mean.view(shape)) / batch_std.view(shape) * r.view(shape) + d.view(shape)
    rate = rate_of(layer)
    std = (1 - rate) * ema_std + rate * batch_std
    # σ ≥ sqrt(eps) keeps the variance non-negative; clamped for rounding at σ = sqrt(eps).
    store(layer, (1 - rate) * ema_mean + rate * batch_mean, (std.square() - layer.eps).clamp_min(0))
    return affine(layer, normalised)


class RenormalisedNorm(Norm):
    name = "tbr"
    layer_forward = tbr_forward
