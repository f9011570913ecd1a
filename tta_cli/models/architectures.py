"""Turn an architecture reference into an ``nn.Module``.

A reference is one of:
- a name from the built-in zoo (``airnet``, ``wrn16_4``, ``resnet26`` ...);
- ``torchvision:NAME`` or ``timm:NAME`` when those packages are installed;
- ``package.module:factory``, a callable taking ``num_classes``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

from torch import nn

from tta_cli.errors import UsageError
from tta_cli.models.zoo import ZOO


def build_architecture(reference: str, num_classes: int) -> nn.Module:
    factory = _resolve_factory(reference)
    try:
        model = factory(num_classes=num_classes)
    except TypeError as error:
        raise UsageError(
            f"Architecture {reference!r} cannot be built with num_classes={num_classes}: {error}."
        ) from error
    if not isinstance(model, nn.Module):
        raise UsageError(f"Architecture {reference!r} returned a {type(model).__name__}, not a torch nn.Module.")
    return model


def _resolve_factory(reference: str) -> Callable[..., nn.Module]:
    if reference in ZOO:
        return ZOO[reference]
    prefix, _, name = reference.partition(":")
    if prefix == "torchvision" and name:
        models = _import("torchvision.models", reference)
        return lambda num_classes: models.get_model(name, weights=None, num_classes=num_classes)
    if prefix == "timm" and name:
        timm = _import("timm", reference)
        return lambda num_classes: timm.create_model(name, pretrained=False, num_classes=num_classes)
    if name:
        module = _import(prefix, reference)
        factory = getattr(module, name, None)
        if callable(factory):
            return factory
        raise UsageError(f"Module {prefix!r} has no callable {name!r}.")
    raise UsageError(
        f"Unknown architecture {reference!r}; use one of {', '.join(sorted(ZOO))}, "
        "torchvision:NAME, timm:NAME or package.module:factory."
    )


def _import(module_name: str, reference: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(
            f"Architecture {reference!r} needs the Python module {module_name!r}, which is not installed."
        ) from error
