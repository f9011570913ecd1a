"""How an image of any size becomes the model's input: resize, then take the centre.

The same framing as timm's eval transform (``timm.data.create_transform(..., is_training=False)``)
and torchvision's weight presets, so that a model sees test images framed as its training
recipe framed them. ``crop_pct`` is the part of the resized image the crop keeps: the image is
resized towards ``floor(size / crop_pct)`` per side, then its centre ``size`` is cut out.

- ``squash``: resized to exactly that scale, aspect ratio lost; with ``crop_pct`` 1 this is a
  plain resize to ``size``, nothing cut off.
- ``center``: resized with its aspect ratio kept until it covers that scale, then cut.

The geometry is computed here only; image files (PIL) and video frames (OpenCV) differ only in
the library that resizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import numpy as np

from tta_cli.config import CropMode, Interpolation


@dataclass(frozen=True)
class Framing:
    """The crop of a model's input: ``size`` (height, width), the part kept, how it is resized.

    >>> Framing((224, 224), crop_pct=0.875, crop_mode="center").resized(480, 640)
    (256, 341)
    """

    size: tuple[int, int]
    crop_pct: float = 1.0
    crop_mode: CropMode = "squash"
    interpolation: Interpolation = "bilinear"

    def __post_init__(self) -> None:
        if min(self.size) < 1:
            raise ValueError(f"The input size must be positive, got {self.size}.")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], the part of the resized image kept; got {self.crop_pct}.")
        if self.crop_mode not in get_args(CropMode):
            raise ValueError(f"Crop mode {self.crop_mode!r} is not supported; use {' or '.join(get_args(CropMode))}.")
        if self.interpolation not in get_args(Interpolation):
            choices = ", ".join(get_args(Interpolation))
            raise ValueError(f"Interpolation {self.interpolation!r} is not supported; use one of {choices}.")

    @property
    def scale(self) -> tuple[int, int]:
        """Height and width the centre is cut from: ``floor(side / crop_pct)``, with a slack below
        float error so that ``crop_pct = 224 / 232`` (torchvision's) gives back 232."""
        height, width = (math.floor(side / self.crop_pct + 1e-9) for side in self.size)
        return height, width

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """Height and width an image of ``height × width`` is resized to before the cut."""
        scale_height, scale_width = self.scale
        if self.crop_mode == "squash":
            return scale_height, scale_width
        if scale_height == scale_width:
            # torchvision's Resize(int), which timm uses here: the shorter side to the scale,
            # the longer one truncated.
            longer = int(scale_height * max(height, width) / min(height, width))
            return (longer, scale_width) if width <= height else (scale_height, longer)
        # timm's ResizeKeepRatio for a non-square input: the side shorter relative to its
        # scale reaches it exactly, both rounded.
        ratio = min(height / scale_height, width / scale_width)
        return round(height / ratio), round(width / ratio)

    def crop(self, resized: np.ndarray) -> np.ndarray:
        """The centre ``size`` of an ``H×W`` or ``H×W×C`` image already ``resized``; the offsets are
        rounded as torchvision's ``CenterCrop`` rounds them (half to even)."""
        height, width = self.size
        top = round((resized.shape[0] - height) / 2)
        left = round((resized.shape[1] - width) / 2)
        return np.ascontiguousarray(resized[top : top + height, left : left + width])
