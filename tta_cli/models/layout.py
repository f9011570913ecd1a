"""Whether a model may run with its convolutions in channels-last layout on the CPU.

oneDNN computes convolutions in that layout natively, so a model stored channels-first spends
part of every step reordering; channels-last spares it (``docs/benchmarks.md``, "What a step
costs"). Not every layer's channels-last kernel is as mature: GroupNorm's backward pass crashes
the process on some shapes (torch 2.13, CPU), which no check in the process can catch. So a model
runs channels-last only when every layer with its own computation is of a kind known to work
there, and when it predicts the same in that layout as stored (a model that flattens a feature
map with ``view`` cannot run in it at all). ``Module.to`` takes ``memory_format`` as its
documentation says; its type stubs do not list it.
"""

from __future__ import annotations

import torch
from torch import nn

SAFE_LAYERS = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.Linear,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Sigmoid,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)
"""The layers whose forward and backward passes take channels-last inputs on the CPU."""


def same_in_channels_last(model: nn.Module, channels: int, size: tuple[int, int]) -> bool:
    """Whether ``model`` (in eval mode, on the CPU) has convolutions, only ``SAFE_LAYERS``, and
    predicts the same to float rounding with its 4-D weights in channels-last layout."""
    leaves = [module for module in model.modules() if not list(module.children())]
    if not any(isinstance(module, nn.Conv2d) for module in leaves):
        return False
    if not all(type(module) in SAFE_LAYERS for module in leaves):
        return False
    example = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected = model(example)
            actual = model.to(memory_format=torch.channels_last)(example)  # type: ignore[call-overload]
    except (RuntimeError, ValueError):
        return False
    finally:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    if not (torch.is_tensor(expected) and torch.is_tensor(actual) and actual.shape == expected.shape):
        return False
    return bool((actual - expected).abs().max() <= 1e-3 * (1 + expected.abs().max()))
