"""How typical of the source's images a test image looks to the model's shallow normalisation layers.

A camera on one scene and a shift that makes the source collapse onto one class look alike in
the predictions: one class, confidently. What tells them apart is the low-level statistics of
each image. An image of one scene is one draw of the source's images; its own statistics at
the shallow layers (per channel, the mean and log variance over its positions) lie where the
source's images' lie. An image under strong sensor noise or in very low light lies where none
of them does. A batch's statistics cannot say this: one scene repeated is far from the pooled
source statistics on every model (its first layer's divergence reaches 1.8-4.5 on the sample
models, where a collapse under extreme noise gives 0.37 on one of them;
docs/benchmarks.md, "What the suite says").

``prepare`` measures, over the shallow half of the BatchNorm layers (in module order, as the
"weighted" norm splits them; of the GroupNorm and LayerNorm layers in a model without
BatchNorm, each layer's input read per channel: ``input_moments``), each
statistic's mean and standard deviation over half of its clean images, and the ``QUANTILE`` of
the other half's scores: the limit. An image's score is
the mean squared standardised statistic, about 1 for a typical image; a batch is typical when
the median of its images' scores is within the limit. So a scene drawn as the source's images
were counts as atypical with a chance of 1 %, on any model, and no constant speaks of one
model's scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

QUANTILE = 0.99
"""The share of the source's own images that count as typical."""
MIN_IMAGES = 200
"""Fewer clean images leave the 99th percentile of the held-out half to one or two images."""
PREFIX = "typicality"


def shallow_layers(model: nn.Module) -> list[nn.Module]:
    """The shallow half of the BatchNorm layers, in module order (the first of them for one or
    two); of the GroupNorm and LayerNorm layers for a model without BatchNorm."""
    layers: list[nn.Module] = [layer for layer in model.modules() if isinstance(layer, _BatchNorm)]
    layers = layers or [layer for layer in model.modules() if isinstance(layer, nn.GroupNorm | nn.LayerNorm)]
    return layers[: math.ceil(len(layers) / 2)]


def image_moments(x: torch.Tensor) -> torch.Tensor:
    """Each image's mean and log variance per channel over its positions, ``N×2C``, for a
    channels-first ``x`` (``N×C×...``)."""
    var, mean = torch.var_mean(x.detach().flatten(2), dim=2)
    return torch.cat([mean, var.clamp_min(torch.finfo(var.dtype).tiny).log()], dim=1)


def input_moments(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``image_moments`` of a normalisation layer's input, per channel. A LayerNorm over one
    dimension gets its channels last (tokens ``N×L×C``, or a map turned ``N×H×W×C``), unless it
    turns a channels-first map itself (ConvNeXt's ``LayerNorm2d``: its own ``forward``, and the
    channels at dimension 1); one over several (``C×H×W``) sees a map as it is. An input without
    positions (``N×C``) has none: an empty tensor."""
    if x.dim() <= 2:
        return torch.empty(0)
    return image_moments(x.movedim(-1, 1) if _channels_last(layer, x) else x)


def _channels_last(layer: nn.Module, x: torch.Tensor) -> bool:
    if not isinstance(layer, nn.LayerNorm) or len(layer.normalized_shape) != 1:
        return False
    permutes_itself = type(layer).forward is not nn.LayerNorm.forward
    return not (permutes_itself and x.shape[1] == layer.normalized_shape[0])


@contextmanager
def recorded_moments(layers: Iterable[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Within this block every forward through ``layers`` appends each one's input moments."""
    found: list[torch.Tensor] = []

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        found.append(input_moments(layer, inputs[0]))

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Typicality:
    """Per shallow layer the location and scale of the source's image moments, and the limit."""

    loc: list[torch.Tensor]
    scale: list[torch.Tensor]
    limit: float

    def weights(self, layer: int) -> torch.Tensor:
        """What standardises the moments at one of the layers: one over their spread, and 0 for a
        statistic that does not vary over clean images (a dead channel), which says nothing,
        rather than a tiny spread that would make every score infinite."""
        scale = self.scale[layer]
        return torch.where(scale > 0, 1 / scale.clamp_min(torch.finfo(scale.dtype).tiny), 0)

    def scores(self, moments: list[torch.Tensor]) -> torch.Tensor:
        """Each image's mean squared standardised moment over the layers (one ``N×2C`` each)."""
        squares = [
            ((m - self.loc[layer].to(m)) * self.weights(layer).to(m)).square().mean(dim=1)
            for layer, m in zip(range(len(self.loc)), moments, strict=True)
        ]
        return torch.stack(squares).mean(dim=0)

    def typical(self, moments: list[torch.Tensor]) -> bool:
        """Whether the median image of a batch is within the limit."""
        return float(self.scores(moments).median()) <= self.limit

    def tensors(self) -> dict[str, torch.Tensor]:
        """As ``source_stats.safetensors`` stores it."""
        stored = {f"{PREFIX}.limit": torch.tensor([self.limit])}
        for index, (loc, scale) in enumerate(zip(self.loc, self.scale, strict=True)):
            stored[f"{PREFIX}.{index}.loc"], stored[f"{PREFIX}.{index}.scale"] = loc, scale
        return stored

    @classmethod
    def from_tensors(cls, stored: dict[str, torch.Tensor]) -> Typicality | None:
        """What ``tensors`` wrote; ``None`` for a bundle prepared without it."""
        if f"{PREFIX}.limit" not in stored:
            return None
        count = sum(1 for key in stored if key.startswith(f"{PREFIX}.") and key.endswith(".loc"))
        loc = [stored[f"{PREFIX}.{index}.loc"] for index in range(count)]
        scale = [stored[f"{PREFIX}.{index}.scale"] for index in range(count)]
        return cls(loc, scale, float(stored[f"{PREFIX}.limit"]))


def measure_typicality(model: nn.Module, images: Iterable[torch.Tensor]) -> Typicality | None:
    """The source's typicality from clean batches (the model in eval mode); ``None`` when the
    model has no normalisation layer over images, or fewer than ``MIN_IMAGES`` images came."""
    layers = shallow_layers(model)
    if not layers:
        return None
    batches: list[list[torch.Tensor]] = []
    with torch.no_grad(), recorded_moments(layers) as found:
        for batch in images:
            found.clear()
            model(batch)
            if any(moments.dim() != 2 or len(moments) != len(batch) for moments in found):
                return None
            batches.append(list(found))
    moments = [torch.cat(per_layer).double() for per_layer in zip(*batches, strict=True)] if batches else []
    count = len(moments[0]) if moments else 0
    if count < MIN_IMAGES:
        return None
    # Seen and held-out halves alternate, so that both cover the whole folder.
    fitted = [layer[0::2] for layer in moments]
    loc = [layer.mean(dim=0) for layer in fitted]
    # A statistic that does not vary over clean images (a dead channel) gets scale 0: see ``weights``.
    eps = torch.finfo(torch.float32).eps
    spreads = [(layer.std(dim=0), centre) for layer, centre in zip(fitted, loc, strict=True)]
    scale = [torch.where(spread > eps * centre.abs(), spread, 0) for spread, centre in spreads]
    typicality = Typicality([value.float() for value in loc], [value.float() for value in scale], math.inf)
    held_out = typicality.scores([layer[1::2].float() for layer in moments])
    typicality.limit = float(torch.quantile(held_out, QUANTILE))
    return typicality
