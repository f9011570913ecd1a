"""Weather corruptions of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019): snow, frost, fog and (held-out) spatter.

Frost overlays photographs of frost on glass; the ones the benchmark used ship as package data of
``imagecorruptions``, which is located here without being imported (its module does not import on
current libraries).
"""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from skimage.filters import gaussian

from tta_cli.corruptions.blur import apply_motion_blur, clipped_zoom
from tta_cli.corruptions.images import ByteImage, FloatImage, round_to_bytes, to_bytes

# The reference draws ``randint(5)``, so the sixth photo is never used.
FROST_PHOTOS = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")

WATER_COLOUR = np.array([175, 238, 238]) / 255  # pale turquoise, RGB
MUD_COLOUR = np.array([63, 42, 20]) / 255  # brown, RGB


def snow(
    image: FloatImage,
    rng: np.random.Generator,
    loc: float,
    scale: float,
    zoom_factor: float,
    threshold: float,
    radius: float,
    sigma: float,
    blend: float,
) -> FloatImage:
    """Falling snow: a thresholded, zoomed noise layer streaked by motion blur, over a washed-out image."""
    height, width = image.shape[:2]
    noise = rng.normal(loc=loc, scale=scale, size=(height, width, 1))
    flakes = clipped_zoom(noise, zoom_factor)[..., 0]
    flakes[flakes < threshold] = 0
    # The reference hands the layer to ImageMagick as an 8-bit PNG and reads the result back as one.
    streaks = apply_motion_blur(to_bytes(flakes) / 255, radius, sigma, rng.uniform(-135, -45))
    streaks = (round_to_bytes(streaks) / 255)[..., np.newaxis]
    image32 = image.astype(np.float32)
    grey = cv2.cvtColor(image32, cv2.COLOR_RGB2GRAY)[..., np.newaxis]
    washed = blend * image32 + (1 - blend) * np.maximum(image32, grey * 1.5 + 0.5)
    return washed + streaks + np.rot90(streaks, k=2)


def frost(
    image: FloatImage, rng: np.random.Generator, image_weight: float, frost_weight: float, photo_scale: float
) -> FloatImage:
    """Frosted glass: ``a·x + b·frost``, frost a random crop of a frost photo resized by ``photo_scale``."""
    height, width = image.shape[:2]
    photo = frost_photo(int(rng.integers(len(FROST_PHOTOS))), photo_scale)
    photo = enlarge_to_exceed(photo, height, width)
    top = int(rng.integers(0, photo.shape[0] - height))
    left = int(rng.integers(0, photo.shape[1] - width))
    crop = photo[top : top + height, left : left + width] / 255
    return image_weight * image + frost_weight * crop


@lru_cache(maxsize=16)
def frost_photo(index: int, scale: float) -> ByteImage:
    """Frost photo ``index`` as RGB, resized by ``scale`` (bilinear, as the reference)."""
    photo = cv2.imread(str(frost_photo_folder() / FROST_PHOTOS[index]))
    if photo is None:
        raise FileNotFoundError(f"Could not read the frost photo {FROST_PHOTOS[index]}.")
    if scale != 1:
        photo = cv2.resize(photo, (0, 0), fx=scale, fy=scale)
    rgb = np.asarray(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB), dtype=np.uint8)
    rgb.flags.writeable = False  # shared through the cache
    return rgb


def enlarge_to_exceed(photo: ByteImage, height: int, width: int) -> ByteImage:
    """The photo itself if it is larger than ``height × width``, else enlarged to 110 % of covering it.

    Crop offsets are drawn from ``[0, photo size − image size)``, so the photo must be strictly
    larger than the image; the 10 % margin follows ``imagecorruptions``.
    """
    if photo.shape[0] > height and photo.shape[1] > width:
        return photo
    cover = 1.1 * max(height / photo.shape[0], width / photo.shape[1])
    size = (math.ceil(photo.shape[1] * cover), math.ceil(photo.shape[0] * cover))
    return np.asarray(cv2.resize(photo, size, interpolation=cv2.INTER_CUBIC), dtype=np.uint8)


def frost_photo_folder() -> Path:
    """The ``frost/`` folder of the installed ``imagecorruptions`` package."""
    spec = importlib.util.find_spec("imagecorruptions")
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "frost"
        if all((folder / name).is_file() for name in FROST_PHOTOS):
            return folder
    raise FileNotFoundError(
        "The frost corruption needs the frost photos shipped with the 'imagecorruptions' package; "
        "install it with: pip install imagecorruptions"
    )


def fog(image: FloatImage, rng: np.random.Generator, strength: float, wibble_decay: float) -> FloatImage:
    """Fog: add ``strength ×`` a plasma fractal, then rescale by ``max / (max + strength)``."""
    height, width = image.shape[:2]
    mapsize = 1 << (max(height, width, 2) - 1).bit_length()
    haze = plasma_fractal(mapsize, wibble_decay, rng)[:height, :width, np.newaxis]
    brightest = image.max()
    return (image + strength * haze) * brightest / (brightest + strength)


def plasma_fractal(mapsize: int, wibble_decay: float, rng: np.random.Generator) -> FloatImage:
    """A ``mapsize × mapsize`` height map in [0, 1] by the diamond-square algorithm (tiling).

    Each pass fills the centres of squares, then of diamonds, with the mean of their four corners
    plus uniform noise of amplitude ``wibble²``; ``wibble`` starts at 100 and shrinks by
    ``wibble_decay`` per pass, so a larger decay gives smoother fog.
    """
    if mapsize < 2 or mapsize & (mapsize - 1):
        raise ValueError(f"The plasma fractal's size must be a power of two, got {mapsize}.")
    heights = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled_mean(four_sum: FloatImage) -> FloatImage:
        return four_sum / 4 + wibble * rng.uniform(-wibble, wibble, four_sum.shape)

    while step >= 2:
        half = step // 2
        corners = heights[0::step, 0::step]
        square_sum = corners + np.roll(corners, -1, axis=0)
        square_sum += np.roll(square_sum, -1, axis=1)
        heights[half::step, half::step] = wibbled_mean(square_sum)
        centres = heights[half::step, half::step]
        heights[0::step, half::step] = wibbled_mean(
            centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        )
        heights[half::step, 0::step] = wibbled_mean(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        )
        step, wibble = half, wibble / wibble_decay
    heights -= heights.min()
    return heights / heights.max()


def spatter(
    image: FloatImage,
    rng: np.random.Generator,
    loc: float,
    scale: float,
    sigma: float,
    threshold: float,
    intensity: float,
    mud: float,
) -> FloatImage:
    """Water drops (``mud`` = 0) or mud splashes (``mud`` = 1) from a smoothed, thresholded noise layer."""
    liquid = gaussian(rng.normal(loc=loc, scale=scale, size=image.shape[:2]), sigma=sigma)
    liquid[liquid < threshold] = 0
    if mud:
        return _splash_mud(image, liquid > threshold, intensity)
    return _splash_water(image, liquid, intensity)


def _splash_water(image: FloatImage, liquid: FloatImage, intensity: float) -> FloatImage:
    """Shade drops by their distance to the drop edges so that they look like lit beads of water."""
    liquid_bytes = (np.clip(liquid, 0, 1) * 255).astype(np.uint8)
    distance = cv2.distanceTransform(255 - cv2.Canny(liquid_bytes, 50, 150), cv2.DIST_L2, 5)
    _, distance = cv2.threshold(distance, 20, 20, cv2.THRESH_TRUNC)
    distance = cv2.equalizeHist(cv2.blur(distance, (3, 3)).astype(np.uint8))
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)
    distance = cv2.blur(cv2.filter2D(distance, cv2.CV_8U, emboss), (3, 3)).astype(np.float32)
    drops = liquid_bytes * distance
    peak = drops.max()
    drops = drops / peak * intensity if peak > 0 else drops
    return image + drops[..., np.newaxis] * WATER_COLOUR


def _splash_mud(image: FloatImage, wet: np.ndarray, blur_sigma: float) -> FloatImage:
    """Replace the image by mud where the smoothed splash mask is dense (≥ 0.8)."""
    mask = gaussian(wet.astype(np.float32), sigma=blur_sigma)
    mask[mask < 0.8] = 0
    mask = mask[..., np.newaxis]
    return image * (1 - mask) + MUD_COLOUR * mask
