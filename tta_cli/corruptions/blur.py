"""Blur corruptions of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019): defocus, glass, motion, zoom and (held-out) Gaussian blur.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.ndimage import zoom
from skimage.filters import gaussian

from tta_cli.corruptions.images import FloatImage, round_to_bytes


def defocus_blur(image: FloatImage, rng: np.random.Generator, radius: float, alias_blur: float) -> FloatImage:
    """Convolve every channel with an anti-aliased disk of the given radius."""
    return np.asarray(cv2.filter2D(image, -1, disk_kernel(radius, alias_blur)), dtype=image.dtype)


def disk_kernel(radius: float, alias_blur: float) -> FloatImage:
    """A normalized disk, softened by a small Gaussian so that sub-pixel radii still blur.

    The grid spans −8..8 with a 3×3 alias kernel up to radius 8, as in the reference script; only
    larger disks get their own grid and a 5×5 alias kernel.
    """
    if radius <= 8:
        half_width, alias_size = 8, 3
    else:
        half_width, alias_size = math.ceil(radius), 5
    coords = np.arange(-half_width, half_width + 1)
    cols, rows = np.meshgrid(coords, coords)
    disk = (cols**2 + rows**2 <= radius**2).astype(np.float32)
    disk /= disk.sum()
    return np.asarray(cv2.GaussianBlur(disk, ksize=(alias_size, alias_size), sigmaX=alias_blur), dtype=np.float32)


def glass_blur(
    image: FloatImage, rng: np.random.Generator, sigma: float, max_delta: int, iterations: int
) -> FloatImage:
    """Blur, jitter pixels locally (frosted glass), blur again."""
    blurred = gaussian(image, sigma=sigma, channel_axis=-1)
    # The reference stores the first blur as uint8 (truncating) before jittering.
    levels = (blurred * 255).astype(np.uint8)
    jittered = jitter_pixels(levels, rng, max_delta, iterations)
    return gaussian(jittered / 255.0, sigma=sigma, channel_axis=-1)


def jitter_pixels(image: np.ndarray, rng: np.random.Generator, max_delta: int, iterations: int) -> np.ndarray:
    """Give each interior pixel, bottom-right to top-left, the value a random neighbour holds at that moment.

    The reference script means to swap the two pixels (``x[a], x[b] = x[b], x[a]``), but on NumPy
    views that statement copies ``b`` into ``a`` and leaves ``b`` as it was; CIFAR-10-C and ImageNet-C
    were generated so, and this reproduces it. Offsets are drawn from ``[-max_delta, max_delta)``,
    the upper end excluded as by the reference's ``np.random.randint``. The copies are sequential,
    so they run as a loop over pixel indices rather than over pixel values.

    >>> row = np.arange(5).reshape(1, 5, 1)
    >>> jitter_pixels(np.tile(row, (5, 1, 1)), np.random.default_rng(0), 1, 1)[..., 0].tolist()[3]
    [0, 1, 2, 2, 3]
    """
    height, width = image.shape[:2]
    rows = np.arange(height - max_delta, max_delta, -1)
    cols = np.arange(width - max_delta, max_delta, -1)
    grid_rows, grid_cols = (axis.ravel() for axis in np.meshgrid(rows, cols, indexing="ij"))
    source_of = list(range(height * width))
    for _ in range(iterations):
        offsets = rng.integers(-max_delta, max_delta, size=(grid_rows.size, 2))
        targets = (grid_rows * width + grid_cols).tolist()
        neighbours = ((grid_rows + offsets[:, 1]) * width + grid_cols + offsets[:, 0]).tolist()
        for target, neighbour in zip(targets, neighbours, strict=True):
            source_of[target] = source_of[neighbour]
    flat = image.reshape(height * width, *image.shape[2:])
    return flat[source_of].reshape(image.shape)


def motion_blur(image: FloatImage, rng: np.random.Generator, radius: float, sigma: float) -> FloatImage:
    """ImageMagick-style motion blur at a uniform random angle in [−45°, 45°]."""
    angle = rng.uniform(-45, 45)
    blurred = apply_motion_blur(image, radius, sigma, angle)
    # The reference reads ImageMagick's result back as an 8-bit PNG.
    return round_to_bytes(blurred) / 255


def apply_motion_blur(image: FloatImage, radius: float, sigma: float, angle_degrees: float) -> FloatImage:
    """Filter with :func:`motion_blur_kernel`, replicating edge pixels (ImageMagick's default)."""
    kernel = motion_blur_kernel(radius, sigma, angle_degrees)
    return np.asarray(cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REPLICATE), dtype=image.dtype)


def motion_blur_kernel(radius: float, sigma: float, angle_degrees: float) -> FloatImage:
    """The kernel of ImageMagick's ``MotionBlurImage`` as a 2-D correlation kernel.

    ImageMagick averages ``2·ceil(radius)+1`` samples along a one-sided line at the angle (0° points
    right, 90° down), weighted by a half-Gaussian of ``sigma`` and rounded to whole-pixel offsets.
    The kernel is centred on its anchor, so a sample ``i`` steps along the line sits at
    ``centre + offset_i``.

    >>> np.round(motion_blur_kernel(radius=1, sigma=1, angle_degrees=0)[2], 3).tolist()
    [0.0, 0.0, 0.574, 0.348, 0.078]
    """
    width = 2 * math.ceil(radius) + 1
    steps = np.arange(width)
    weights = np.exp(-(steps**2) / (2 * sigma**2))
    weights /= weights.sum()
    angle = math.radians(angle_degrees)
    col_offsets = np.ceil(steps * math.cos(angle) - 0.5).astype(int)
    row_offsets = np.ceil(steps * math.sin(angle) - 0.5).astype(int)
    centre = width - 1
    kernel = np.zeros((2 * width - 1, 2 * width - 1))
    np.add.at(kernel, (centre + row_offsets, centre + col_offsets), weights)
    return kernel


def zoom_blur(image: FloatImage, rng: np.random.Generator, end: float, step: float) -> FloatImage:
    """Average the image with centre zooms by ``1, 1+step, …`` below ``end``.

    The factors come from ``np.arange(1, end, step)`` exactly as in the reference: its float rounding
    includes ``end`` itself for some severities (CIFAR 1.06 and 1.11), and the benchmark was made so.
    """
    factors = np.arange(1, end, step)
    image32 = image.astype(np.float32)
    total = image32.copy()
    for factor in factors:
        total += clipped_zoom(image32, float(factor))
    return total / (len(factors) + 1)


def clipped_zoom(image: FloatImage, factor: float) -> FloatImage:
    """Zoom the centre of an ``H×W×C`` image by ``factor`` (bilinear), keeping the size ``H×W``."""
    height, width = image.shape[:2]
    crop_height, crop_width = math.ceil(height / factor), math.ceil(width / factor)
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    crop = image[top : top + crop_height, left : left + crop_width]
    zoomed = zoom(crop, (factor, factor, 1), order=1)
    trim_top, trim_left = (zoomed.shape[0] - height) // 2, (zoomed.shape[1] - width) // 2
    return zoomed[trim_top : trim_top + height, trim_left : trim_left + width]


def gaussian_blur(image: FloatImage, rng: np.random.Generator, sigma: float) -> FloatImage:
    """Gaussian blur of standard deviation ``sigma`` pixels."""
    return gaussian(image, sigma=sigma, channel_axis=-1)
