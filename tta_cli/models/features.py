"""Pooled features of chosen layers, for the feature-statistics alignment objective, and the
penultimate features a classifier head reads, for distillation."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tta_cli.errors import UsageError


def pool(output: torch.Tensor) -> torch.Tensor:
    """Reduce a layer's output to one vector per sample: spatial mean for maps, CLS token for tokens."""
    if output.ndim == 4:
        return output.mean(dim=(2, 3))
    if output.ndim == 3:
        return output[:, 0]
    return output.flatten(1)


@contextmanager
def record_features(model: nn.Module, layer_names: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """While active, every forward pass fills the yielded dict with ``{layer: pooled output}``."""
    modules = dict(model.named_modules())
    features: dict[str, torch.Tensor] = {}
    handles = []
    for name in layer_names:
        if name not in modules:
            raise UsageError(f"The model has no layer named {name!r} to take features from.")

        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor, name: str = name) -> None:
            features[name] = pool(output)

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()


def classifier_head(model: nn.Module, num_classes: int) -> str:
    """The name of the layer that turns the model's penultimate features into its logits: the
    last ``nn.Linear`` with ``num_classes`` outputs (``head`` of the zoo's models, ``fc`` of
    torchvision's ResNets, ``head.fc`` of timm's ConvNeXts)."""
    heads = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module.out_features == num_classes
    ]
    if not heads:
        raise UsageError(
            f"The model has no linear layer with {num_classes} outputs whose input could serve as its features."
        )
    return heads[-1]


@contextmanager
def record_head_input(model: nn.Module, head: str) -> Iterator[dict[str, torch.Tensor]]:
    """While active, every forward pass fills the yielded dict with ``{head: pooled input}``: the
    penultimate features, still in the autograd graph."""
    features: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        features[head] = pool(inputs[0])

    handle = model.get_submodule(head).register_forward_pre_hook(hook)
    try:
        yield features
    finally:
        handle.remove()


def default_feature_layers(model: nn.Module, example: torch.Tensor, count: int = 3) -> list[str]:
    """The model's own ``feature_layers`` if it declares them, else the last ``count`` top-level
    children that produce spatial maps or token sequences."""
    declared = getattr(model, "feature_layers", None)
    if declared:
        return list(declared)
    shapes: dict[str, int] = {}
    handles = [
        child.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, getattr(out, "ndim", 0)))
        for name, child in model.named_children()
    ]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
    candidates = [name for name, ndim in shapes.items() if ndim in (3, 4)]
    return candidates[-count:]
