"""Per-severity parameters of CIFAR-10-C and ImageNet-C (Hendrycks & Dietterich, ICLR 2019).

The two benchmarks use different numbers: ImageNet-C's are sized for 224 px images and destroy a
32 px image (Gaussian noise σ 0.38 instead of 0.10, contrast ×0.05 instead of ×0.15). The CIFAR table
restates the CIFAR-10-C generation script (see docs/CIFAR10C.md); the ImageNet table restates the
ImageNet-C script as the ``imagecorruptions`` package applies it to images of any size.

Each entry holds, for severities 1..5, the positional parameters of the function of the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeAlias

SeverityParameters: TypeAlias = tuple[float, ...]
ParameterTable: TypeAlias = Mapping[str, tuple[SeverityParameters, ...]]

CIFAR_SIZE = 32
"""Images of exactly this height and width get the CIFAR-10-C parameters."""

CIFAR_PARAMETERS: ParameterTable = MappingProxyType(
    {
        "gaussian_noise": ((0.04,), (0.06,), (0.08,), (0.09,), (0.10,)),
        "shot_noise": ((500,), (250,), (100,), (75,), (50,)),
        "impulse_noise": ((0.01,), (0.02,), (0.03,), (0.05,), (0.07,)),
        # (radius, alias_blur)
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        # (sigma, max_delta, iterations)
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        # (radius, sigma)
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        # (end, step)
        "zoom_blur": ((1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)),
        # (loc, scale, zoom_factor, threshold, radius, sigma, blend)
        "snow": (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
        # (image_weight, frost_weight, photo_scale)
        "frost": ((1, 0.2, 0.2), (1, 0.3, 0.2), (0.9, 0.4, 0.2), (0.85, 0.4, 0.2), (0.75, 0.45, 0.2)),
        # (strength, wibble_decay)
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": ((0.05,), (0.1,), (0.15,), (0.2,), (0.3,)),
        "contrast": ((0.75,), (0.5,), (0.4,), (0.3,), (0.15,)),
        # (alpha, sigma, max_shift) as fractions of the side: the script's 32×(…)
        "elastic_transform": (
            (0, 0, 0.08),
            (0.05, 0.2, 0.07),
            (0.08, 0.06, 0.06),
            (0.1, 0.04, 0.05),
            (0.1, 0.03, 0.03),
        ),
        "pixelate": ((0.95,), (0.9,), (0.85,), (0.75,), (0.65,)),
        "jpeg_compression": ((80,), (65,), (58,), (50,), (40,)),
        "speckle_noise": ((0.06,), (0.1,), (0.12,), (0.16,), (0.2,)),
        "gaussian_blur": ((0.4,), (0.6,), (0.7,), (0.8,), (1,)),
        # (loc, scale, sigma, threshold, intensity, mud)
        "spatter": (
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ),
        # (scale, shift)
        "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    }
)

# ImageNet-C writes its elastic parameters as 244×(…) for 224 px images (a slip it kept); as
# fractions of the side they are (244/224)×(…), which reproduces them exactly at 224 px.
_IMAGENET_ELASTIC_SCALE = 244 / 224

IMAGENET_PARAMETERS: ParameterTable = MappingProxyType(
    {
        "gaussian_noise": ((0.08,), (0.12,), (0.18,), (0.26,), (0.38,)),
        "shot_noise": ((60,), (25,), (12,), (5,), (3,)),
        "impulse_noise": ((0.03,), (0.06,), (0.09,), (0.17,), (0.27,)),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)),
        "snow": (
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ),
        "frost": ((1, 0.4, 1), (0.8, 0.6, 1), (0.7, 0.7, 1), (0.65, 0.7, 1), (0.6, 0.75, 1)),
        "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
        "brightness": ((0.1,), (0.2,), (0.3,), (0.4,), (0.5,)),
        "contrast": ((0.4,), (0.3,), (0.2,), (0.1,), (0.05,)),
        "elastic_transform": tuple(
            tuple(_IMAGENET_ELASTIC_SCALE * value for value in entry)
            for entry in ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02))
        ),
        "pixelate": ((0.6,), (0.5,), (0.4,), (0.3,), (0.25,)),
        "jpeg_compression": ((25,), (18,), (15,), (10,), (7,)),
        "speckle_noise": ((0.15,), (0.2,), (0.35,), (0.45,), (0.6,)),
        "gaussian_blur": ((1,), (2,), (3,), (4,), (6,)),
        "spatter": (
            (0.65, 0.3, 4, 0.69, 0.6, 0),
            (0.65, 0.3, 3, 0.68, 0.6, 0),
            (0.65, 0.3, 2, 0.68, 0.5, 0),
            (0.65, 0.3, 1, 0.65, 1.5, 1),
            (0.67, 0.4, 1, 0.65, 1.5, 1),
        ),
        "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
    }
)


def parameter_table(height: int, width: int) -> ParameterTable:
    """CIFAR-10-C's parameters for 32×32 images, ImageNet-C's for every other size.

    >>> parameter_table(32, 32)["gaussian_noise"][4], parameter_table(224, 224)["gaussian_noise"][4]
    ((0.1,), (0.38,))
    """
    return CIFAR_PARAMETERS if (height, width) == (CIFAR_SIZE, CIFAR_SIZE) else IMAGENET_PARAMETERS
