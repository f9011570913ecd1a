"""Conversions between stored uint8 images and the [0, 1] floats the corruptions work in."""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

FloatImage: TypeAlias = npt.NDArray[np.floating[Any]]
"""An ``H×W×3`` (or ``H×W`` for a single layer) array of floats, nominally in [0, 1]."""

ByteImage: TypeAlias = npt.NDArray[np.uint8]
"""An ``H×W×3`` RGB image of uint8."""

# Float products such as 200/255·255 land a hair below the integer; without this guard
# truncation would drop them a level and even untouched pixels would change.
_QUANTIZATION_GUARD = 1e-6


def to_unit_float(image: ByteImage) -> npt.NDArray[np.float64]:
    """uint8 in [0, 255] → float64 in [0, 1]."""
    return image.astype(np.float64) / 255.0


def to_bytes(image: FloatImage) -> ByteImage:
    """Clip to [0, 1] and quantize by truncation.

    Truncation rather than rounding because the reference generator stored its float results
    with ``np.uint8(...)``, which truncates.

    >>> to_bytes(np.array([-0.2, 200 / 255, 0.999, 1.7])).tolist()
    [0, 200, 254, 255]
    """
    scaled = np.clip(image, 0.0, 1.0) * 255.0 + _QUANTIZATION_GUARD
    return np.minimum(scaled, 255.0).astype(np.uint8)


def round_to_bytes(image: FloatImage) -> ByteImage:
    """Round to the nearest uint8 level, for images that must pass through an 8-bit codec."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
