"""Noise corruptions of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019): Gaussian, shot, impulse and (held-out) speckle noise.

Each takes an image in [0, 1], a random generator and the severity's parameters, and returns
floats that the caller clips and quantizes.
"""

from __future__ import annotations

import numpy as np
from skimage.util import random_noise

from tta_cli.corruptions.images import FloatImage


def gaussian_noise(image: FloatImage, rng: np.random.Generator, sigma: float) -> FloatImage:
    """Additive sensor noise: ``x + N(0, sigma)``."""
    return image + rng.normal(scale=sigma, size=image.shape)


def shot_noise(image: FloatImage, rng: np.random.Generator, photons: float) -> FloatImage:
    """Photon-counting noise: ``Poisson(x·photons) / photons`` (fewer photons, more noise)."""
    return rng.poisson(image * photons) / photons


def impulse_noise(image: FloatImage, rng: np.random.Generator, amount: float) -> FloatImage:
    """Salt-and-pepper noise on a fraction ``amount`` of the values (each channel independently)."""
    return random_noise(image, mode="s&p", amount=amount, rng=rng)


def speckle_noise(image: FloatImage, rng: np.random.Generator, sigma: float) -> FloatImage:
    """Multiplicative noise: ``x + x·N(0, sigma)``."""
    return image + image * rng.normal(scale=sigma, size=image.shape)
