"""Decoding one image file into an RGB uint8 array framed as the model's input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from tta_cli.config import Interpolation
from tta_cli.streams.framing import Framing

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
PIL_FILTERS: dict[Interpolation, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
}

# EXIF orientation (TIFF 6.0, tag 274) → the turn that shows the image upright.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class UnreadableImage(Exception):
    """The file is not a decodable image (truncated, empty, or another format)."""


def decode_image(path: Path, framing: Framing) -> np.ndarray:
    """Read ``path`` as ``H × W × 3`` uint8 RGB, framed as ``framing`` says (``H, W = framing.size``).

    Grayscale, palette and RGBA images are converted (alpha is dropped, not composited, as
    cameras give no alpha); 16-bit and float images are scaled to 8 bits by their range.
    """
    try:
        return to_rgb_array(open_upright(path), framing)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImage(_reason(error)) from error


def open_upright(path: Path) -> Image.Image:
    """The image file at ``path``, decoded and turned upright as its EXIF orientation says: as
    a viewer shows a camera's photo, and as OpenCV reads video frames and images. (Pillow's
    ``ImageOps.exif_transpose`` also rewrites the EXIF, which fails on malformed tags of images
    that decode well; only the turn is wanted here, and an unreadable EXIF leaves the image as
    stored.)"""
    with Image.open(path) as image:
        image.load()
        turn = UPRIGHT.get(_orientation(image))
        return image.transpose(turn) if turn is not None else image.copy()


def _orientation(image: Image.Image) -> int:
    """The image's EXIF orientation; 1 (as stored) when it has none or its EXIF is not readable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation)
    except SyntaxError:  # Pillow's error for an EXIF block that is not TIFF
        return 1
    return value if isinstance(value, int) else 1


def to_rgb_array(image: Image.Image | np.ndarray, framing: Framing) -> np.ndarray:
    """An image (PIL, or a ``H×W`` / ``H×W×3`` / ``H×W×4`` array) as uint8 RGB framed by ``framing``."""
    rgb = _to_rgb(Image.fromarray(image) if isinstance(image, np.ndarray) else image)
    height, width = framing.resized(rgb.height, rgb.width)
    if rgb.size != (width, height):
        # torchvision and timm resize PIL images with these same filters.
        rgb = rgb.resize((width, height), PIL_FILTERS[framing.interpolation])
    return framing.crop(np.asarray(rgb, dtype=np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        eight_bit = np.clip(array / _full_scale(image.mode, array) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    return image.convert("RGB")


def _full_scale(mode: str, array: np.ndarray) -> float:
    """The value that means white: 16-bit PNGs may open as 'I', float images are in [0, 1]."""
    peak = float(array.max()) if array.size else 0.0
    if mode.startswith("I;16") or (mode == "I" and peak > 255):
        return 65535.0
    if mode == "F" and peak > 1:
        return peak
    return 1.0 if mode == "F" else 255.0


def _reason(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "cannot identify image file"  # PIL's words, without the path it appends
    return str(error) or type(error).__name__
