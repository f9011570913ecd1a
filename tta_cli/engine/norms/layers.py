"""What a BatchNorm layer does with a test batch in train mode: the forwards of the smoothed
normalisations, swapped onto the layer instance, and the arithmetic they share.

The layers are not replaced: in train mode their forward is swapped on the instance, which
keeps every state-dict key, and in eval mode they run BatchNorm's own forward. The smoothed
statistics live in the layer's own ``running_mean`` and ``running_var`` (for "tbr",
``running_var = σ_ema² − eps``), so snapshots, rollback, resume and export see them with no
change, and the eval-mode layer normalises with them: that eval-mode model is the adapted model
without its dependence on the batch, and it is what an export of such a run holds.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tta_cli.errors import UsageError

MOMENTUM = 0.05
"""RoTTA's α, and 1 − DELTA's prior of 0.95, as their public code sets them."""

LayerForward = Callable[[_BatchNorm, torch.Tensor], torch.Tensor]


def batch_norm_layers(model: torch.nn.Module) -> list[_BatchNorm]:
    return [layer for layer in model.modules() if isinstance(layer, _BatchNorm)]


def configure_layers(model: torch.nn.Module, forward: LayerForward | None, train: bool, name: str = "") -> None:
    """Every BatchNorm layer of ``model`` in train or eval mode, with ``forward`` (a smoothed
    normalisation, ``name`` in messages) swapped onto it, or its own. Whatever an earlier call
    set is undone first, so a model can be configured again."""
    for layer_name, layer in model.named_modules():
        if not isinstance(layer, _BatchNorm):
            continue
        layer.__dict__.pop("forward", None)
        layer.__dict__.pop("smoothing_rate", None)
        layer.train(train)
        if forward is not None:
            if layer.running_mean is None or layer.running_var is None:
                raise UsageError(
                    f"BatchNorm layer {layer_name!r} keeps no running statistics, so {name!r} has none to smooth; "
                    "use --norm batch."
                )
            layer.forward = MethodType(forward, layer)  # type: ignore[method-assign]


def set_rate(layers: list[_BatchNorm], rate: float) -> None:
    """The rate at which the smoothed norms move towards each batch's statistics."""
    for layer in layers:
        # torch's stub types Module.__setattr__ for tensors and modules; plain attributes work.
        layer.smoothing_rate = rate  # type: ignore[assignment]


def rate_of(layer: _BatchNorm) -> float:
    return getattr(layer, "smoothing_rate", MOMENTUM)


def robust_forward(layer: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """RoTTA's robust BN: normalise with the smoothed statistics after this batch's update."""
    if not layer.training:
        return type(layer).forward(layer, x)
    mean, var = running_stats(layer)
    batch_var, batch_mean = torch.var_mean(x, dim=reduced_dims(x), unbiased=False)
    rate = rate_of(layer)
    mean = (1 - rate) * mean + rate * batch_mean
    var = (1 - rate) * var + rate * batch_var
    store(layer, mean, var)
    return normalise(layer, x, mean, var)


def running_stats(layer: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's running mean and variance; the smoothed norms refuse a layer without them
    (``configure_layers``), so their absence here is a bug."""
    if layer.running_mean is None or layer.running_var is None:
        raise RuntimeError("A smoothed BatchNorm layer lost its running statistics.")
    return layer.running_mean, layer.running_var


def store(layer: _BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: bool = True) -> None:
    """Write what normalised a batch into the layer's running statistics (``count``: as one
    more batch tracked)."""
    running_mean, running_var = running_stats(layer)
    with torch.no_grad():
        running_mean.copy_(mean)
        running_var.copy_(var)
        if count and layer.num_batches_tracked is not None:
            layer.num_batches_tracked.add_(1)


def normalise(layer: _BatchNorm, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    shape = channel_shape(x)
    return affine(layer, (x - mean.view(shape)) / torch.sqrt(var.view(shape) + layer.eps))


def affine(layer: _BatchNorm, normalised: torch.Tensor) -> torch.Tensor:
    if layer.weight is None or layer.bias is None:
        return normalised
    shape = channel_shape(normalised)
    return normalised * layer.weight.view(shape) + layer.bias.view(shape)


def per_image(x: torch.Tensor) -> torch.Tensor:
    """Each image's mean per channel, ``N×C``."""
    x = x.detach()
    return x.flatten(2).mean(dim=2) if x.dim() > 2 else x


def reduced_dims(x: torch.Tensor) -> list[int]:
    """Every axis but the channels' (axis 1): ``N×C``, ``N×C×L``, ``N×C×H×W`` ..."""
    return [0, *range(2, x.dim())]


def channel_shape(x: torch.Tensor) -> list[int]:
    return [1, -1] + [1] * (x.dim() - 2)


def gaussian_divergence(
    mean: torch.Tensor, var: torch.Tensor, other_mean: torch.Tensor, other_var: torch.Tensor
) -> float:
    """The mean of the two Kullback–Leibler divergences between per-channel Gaussians, averaged
    over channels: 0.5 for a shift of the mean by one standard deviation.

    >>> gaussian_divergence(torch.ones(3), torch.ones(3), torch.zeros(3), torch.ones(3))
    0.5
    """
    tiny = torch.finfo(var.dtype).tiny
    var, other_var = var + tiny, other_var + tiny
    spread = var / other_var + other_var / var - 2
    offset = (mean - other_mean).square() * (1 / var + 1 / other_var)
    return float((spread + offset).mean() / 4)
