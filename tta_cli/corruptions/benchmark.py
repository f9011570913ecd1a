"""The corruption benchmark of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations" (ICLR 2019): 15 corruptions for evaluation, 4 held out;
and 4 shifts beyond it, under which source models collapse (``tta_cli.corruptions.beyond``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import numpy as np

from tta_cli.corruptions import beyond, blur, digital, noise, weather
from tta_cli.corruptions.images import ByteImage, FloatImage, to_bytes, to_unit_float
from tta_cli.corruptions.parameters import parameter_table

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
"""The 15 benchmark corruptions, in the benchmark's order."""

HELD_OUT: tuple[str, ...] = ("speckle_noise", "spatter", "gaussian_blur", "saturate")
"""Four further corruptions for tuning and pre-training, never for evaluation."""

BEYOND: tuple[str, ...] = ("extreme_noise", "inverted", "low_light", "grayscale")
"""Shifts outside the benchmark, of one strength whatever the severity."""

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

_FUNCTIONS: MappingProxyType[str, Callable[..., FloatImage]] = MappingProxyType(
    {
        "gaussian_noise": noise.gaussian_noise,
        "shot_noise": noise.shot_noise,
        "impulse_noise": noise.impulse_noise,
        "speckle_noise": noise.speckle_noise,
        "defocus_blur": blur.defocus_blur,
        "glass_blur": blur.glass_blur,
        "motion_blur": blur.motion_blur,
        "zoom_blur": blur.zoom_blur,
        "gaussian_blur": blur.gaussian_blur,
        "snow": weather.snow,
        "frost": weather.frost,
        "fog": weather.fog,
        "spatter": weather.spatter,
        "brightness": digital.brightness,
        "contrast": digital.contrast,
        "elastic_transform": digital.elastic_transform,
        "pixelate": digital.pixelate,
        "jpeg_compression": digital.jpeg_compression,
        "saturate": digital.saturate,
    }
)
_BEYOND: MappingProxyType[str, Callable[..., FloatImage]] = MappingProxyType(
    {name: getattr(beyond, name) for name in BEYOND}
)


def corrupt(image: ByteImage, name: str, severity: int, rng: np.random.Generator) -> ByteImage:
    """Apply corruption ``name`` at ``severity`` (1..5) to an ``H×W×3`` uint8 RGB image.

    32×32 images get CIFAR-10-C's parameters, others ImageNet-C's (see :func:`parameter_table`).
    The result is uint8 of the same shape and depends only on the image and the state of ``rng``.

    >>> image = np.full((32, 32, 3), 100, dtype=np.uint8)
    >>> corrupt(image, "contrast", 5, np.random.default_rng(0))[0, 0].tolist()
    [100, 100, 100]
    """
    check_corruption(name, severity)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        described = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image)
        raise ValueError(f"Expected an H×W×3 uint8 RGB image, got a {described}.")
    if name in _BEYOND:
        return to_bytes(_BEYOND[name](to_unit_float(image), rng))
    parameters = parameter_table(*image.shape[:2])[name][severity - 1]
    return to_bytes(_FUNCTIONS[name](to_unit_float(image), rng, *parameters))


def check_corruption(name: str, severity: int) -> None:
    """Raise ``ValueError`` unless ``name`` is a known corruption and ``severity`` is in 1..5."""
    if name not in _FUNCTIONS and name not in _BEYOND:
        valid = ", ".join(CORRUPTIONS + HELD_OUT + BEYOND)
        raise ValueError(f"Unknown corruption {name!r}; valid names are: {valid}.")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"Severity must be an integer from 1 to 5, got {severity!r}.")
