"""Digital corruptions of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019): brightness, contrast, elastic transform, pixelate,
JPEG compression and (held-out) saturate.
"""

from __future__ import annotations

from io import BytesIO

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import map_coordinates
from skimage.color import hsv2rgb, rgb2hsv
from skimage.filters import gaussian

from tta_cli.corruptions.images import FloatImage, round_to_bytes, to_unit_float


def brightness(image: FloatImage, rng: np.random.Generator, shift: float) -> FloatImage:
    """Add ``shift`` to the value channel in HSV."""
    hsv = rgb2hsv(image)
    hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
    return hsv2rgb(hsv)


def saturate(image: FloatImage, rng: np.random.Generator, scale: float, shift: float) -> FloatImage:
    """Map the saturation channel in HSV as ``S·scale + shift``."""
    hsv = rgb2hsv(image)
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0, 1)
    return hsv2rgb(hsv)


def contrast(image: FloatImage, rng: np.random.Generator, factor: float) -> FloatImage:
    """Pull every channel towards its mean: ``(x − mean)·factor + mean``."""
    means = image.mean(axis=(0, 1), keepdims=True)
    return (image - means) * factor + means


def elastic_transform(
    image: FloatImage, rng: np.random.Generator, alpha: float, sigma: float, max_shift: float
) -> FloatImage:
    """A random affine warp followed by a smooth random displacement field.

    The three parameters are fractions of the image's shorter side, so one table entry means the
    same distortion at any resolution: the affine moves three points around the centre by up to
    ``max_shift``; the field is ``alpha ×`` uniform noise in (−1, 1) smoothed by a Gaussian of ``sigma``.
    """
    height, width = image.shape[:2]
    side = min(height, width)
    alpha, sigma, max_shift = alpha * side, sigma * side, max_shift * side
    warped = _random_affine(image.astype(np.float32), rng, max_shift)
    col_shift = _smooth_displacement(rng, (height, width), sigma, alpha)
    row_shift = _smooth_displacement(rng, (height, width), sigma, alpha)
    rows, cols, channels = np.meshgrid(np.arange(height), np.arange(width), np.arange(image.shape[2]), indexing="ij")
    coordinates = (rows + row_shift[..., np.newaxis], cols + col_shift[..., np.newaxis], channels)
    return map_coordinates(warped, coordinates, order=1, mode="reflect")


def _smooth_displacement(rng: np.random.Generator, shape: tuple[int, int], sigma: float, alpha: float) -> FloatImage:
    """Uniform noise in (−1, 1), Gaussian-smoothed (reflecting at the borders) and scaled by ``alpha``."""
    noise = rng.uniform(-1, 1, size=shape)
    return (gaussian(noise, sigma=sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)


def _random_affine(image: FloatImage, rng: np.random.Generator, max_shift: float) -> FloatImage:
    """Move three points of a square around the centre by up to ``max_shift`` and warp to match."""
    height, width = image.shape[:2]
    centre = np.array([height // 2, width // 2], dtype=np.float32)
    half_square = min(height, width) // 3
    corners = [centre + half_square, [centre[0] + half_square, centre[1] - half_square], centre - half_square]
    source = np.array(corners, dtype=np.float32)
    target = source + rng.uniform(-max_shift, max_shift, size=source.shape).astype(np.float32)
    matrix = cv2.getAffineTransform(source, target)
    warped = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT_101)
    return np.asarray(warped, dtype=image.dtype)


def pixelate(image: FloatImage, rng: np.random.Generator, factor: float) -> FloatImage:
    """Box-downsample to ``factor`` of the size, then box-upsample back."""
    height, width = image.shape[:2]
    picture = Image.fromarray(round_to_bytes(image))
    small = picture.resize((int(width * factor), int(height * factor)), Image.Resampling.BOX)
    return to_unit_float(np.asarray(small.resize((width, height), Image.Resampling.BOX)))


def jpeg_compression(image: FloatImage, rng: np.random.Generator, quality: int) -> FloatImage:
    """Encode as JPEG at ``quality`` (Pillow's defaults otherwise) and decode again."""
    buffer = BytesIO()
    Image.fromarray(round_to_bytes(image)).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return to_unit_float(np.asarray(decoded.convert("RGB")))
