"""The preprocessing a hub's pretrained weights were trained with: ``prepare``'s defaults.

``timm:NAME``: timm's pretrained config of the model, as ``timm.data.resolve_model_data_config``
completes it (input size, mean, std, crop_pct, crop_mode, interpolation). ``torchvision:NAME``:
the eval transform of the default weights, ``get_model_weights(NAME).DEFAULT.transforms()``,
which resizes the shorter side to ``resize_size`` and cuts the centre ``crop_size``: centre
framing with ``crop_pct = crop_size / resize_size``.

Each library is called in one small function, so that tests can stand in for the libraries
while the conversion stays under test.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn

from tta_cli.models.architectures import hub_model


def pretrained_preprocessing(architecture: str, model: nn.Module) -> dict[str, Any]:
    """``ModelSpec``'s preprocessing fields (``input_size``, ``mean``, ``std``, ``crop_pct``,
    ``crop_mode``, ``interpolation``) as the hub gives them for ``architecture``, already built
    as ``model``; empty for an architecture from no hub."""
    match hub_model(architecture):
        case ("timm", _):
            return from_timm(timm_data_config(model))
        case ("torchvision", name):
            return from_torchvision(torchvision_transforms(name))
    return {}


def timm_data_config(model: nn.Module) -> Mapping[str, Any]:
    """timm's eval data config of a model timm built (from its ``pretrained_cfg``)."""
    return importlib.import_module("timm.data").resolve_model_data_config(model)


def torchvision_transforms(name: str) -> Any:
    """The eval transform (``ImageClassification``) of torchvision's default weights of ``name``."""
    return importlib.import_module("torchvision.models").get_model_weights(name).DEFAULT.transforms()


def from_timm(config: Mapping[str, Any]) -> dict[str, Any]:
    _channels, height, width = config["input_size"]
    return {
        "input_size": (int(height), int(width)),
        "mean": tuple(float(value) for value in config["mean"]),
        "std": tuple(float(value) for value in config["std"]),
        "crop_pct": float(config["crop_pct"]),
        "crop_mode": config["crop_mode"],
        "interpolation": config["interpolation"],
    }


def from_torchvision(transforms: Any) -> dict[str, Any]:
    crop, resize = transforms.crop_size[0], transforms.resize_size[0]
    return {
        "input_size": (int(crop), int(crop)),
        "mean": tuple(float(value) for value in transforms.mean),
        "std": tuple(float(value) for value in transforms.std),
        "crop_pct": crop / resize,
        "crop_mode": "center",
        "interpolation": transforms.interpolation.value,  # an InterpolationMode, e.g. "bilinear"
    }
