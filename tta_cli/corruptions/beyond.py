"""Shifts outside CIFAR-10-C under which a source model tends to collapse onto one class: a
development suite needs them to tell a collapse from a genuine one-class stream.

Each takes an image in [0, 1] and a random generator and returns floats that the caller clips
and quantizes; they have one strength, whatever the severity asked for.
"""

from __future__ import annotations

import numpy as np

from tta_cli.corruptions.images import FloatImage

EXTREME_NOISE_SIGMA = 0.5
"""Five times the Gaussian noise of CIFAR-10-C's severity 5 (σ = 0.10)."""
LOW_LIGHT_GAIN = 0.08
"""What is left of the light: an exposure about 3.6 stops under."""
LUMA = np.array([0.299, 0.587, 0.114])
"""ITU-R 601 luma weights, as PIL's grayscale conversion."""


def extreme_noise(image: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Additive sensor noise far past the benchmark's: ``x + N(0, 0.5)``."""
    return image + rng.normal(scale=EXTREME_NOISE_SIGMA, size=image.shape)


def inverted(image: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Inverted polarity (a negative, a thermal camera's white-hot/black-hot switch): ``1 − x``."""
    return 1 - image


def low_light(image: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Very low light: the image at 8 % of its brightness."""
    return image * LOW_LIGHT_GAIN


def grayscale(image: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Colour to gray: every channel the image's luma (a camera switched to monochrome)."""
    return np.repeat((image @ LUMA)[..., None], 3, axis=2)


PARAMETERS: dict[str, list[float]] = {
    "extreme_noise": [EXTREME_NOISE_SIGMA],
    "inverted": [],
    "low_light": [LOW_LIGHT_GAIN],
    "grayscale": LUMA.tolist(),
}
"""What each shift's output depends on besides the image, for caches to key on."""
