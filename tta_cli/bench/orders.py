"""The order in which a corruption's images arrive (``tta-cli bench --order``).

- ``shuffled``: the stream's own order, a seeded shuffle (``streams.select_images``): i.i.d. labels.
- ``sorted``: grouped by class in label order, each class keeping its images' stream order.
- ``dirichlet:ALPHA``: labels correlated over time, as in NOTE (Gong et al., NeurIPS 2022) and
  RoTTA (Yuan et al., CVPR 2023). The stream is split into T time slots (T = the number of
  classes, at most 100); each class's images are shared out over the slots in proportions
  drawn from Dirichlet(ALPHA·1_T), and the slots are played one after the other, each as its
  classes' shares one after the other in a random order (both papers' samplers). ALPHA = 0.1
  puts most of a class in one or two slots: long runs of one class, few classes at a time.
  A large ALPHA gives every slot every class in equal shares, still each share in one run, so
  the label mix over a slot is even but the order is not i.i.d.: that is ``shuffled``.
- ``video:K``: each image, in stream order, as K consecutive frames that differ by a random
  shift of at most one pixel and Gaussian noise of σ = 2/255 (``video_frames``), as a camera
  watching one scene sends them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from tta_cli.errors import UsageError
from tta_cli.streams.ordering import class_sorted

ORDERS = ("shuffled", "sorted", "dirichlet:ALPHA", "video:K")
MAX_SLOTS = 100
FRAME_NOISE = 2.0
"""Standard deviation of a video frame's pixel noise, in 0-255 levels."""


@dataclass(frozen=True)
class Order:
    kind: str
    alpha: float = 0.0
    frames: int = 1


def parse_order(text: str) -> Order:
    """``Order`` from ``--order``'s text; anything else is a one-sentence usage error.

    >>> parse_order("dirichlet:0.1")
    Order(kind='dirichlet', alpha=0.1, frames=1)
    """
    kind, colon, value = text.partition(":")
    if text in ("shuffled", "sorted"):
        return Order(text)
    if kind == "dirichlet" and colon:
        try:
            alpha = float(value)
        except ValueError:
            alpha = float("nan")
        if not (0 < alpha < float("inf")):
            raise UsageError(f"Order {text!r} needs a finite concentration ALPHA above 0, e.g. dirichlet:0.1.")
        return Order(kind, alpha=alpha)
    if kind == "video" and colon:
        if not value.isdecimal() or int(value) < 1:
            raise UsageError(f"Order {text!r} needs a whole number K ≥ 1 of frames per image, e.g. video:4.")
        return Order(kind, frames=int(value))
    raise UsageError(f"Unknown order {text!r}; use one of {', '.join(ORDERS)}.")


def order_rng(seed: int, corruption: str) -> np.random.Generator:
    """One generator per corruption and seed, so that every protocol and round sees the same order."""
    words = np.frombuffer(hashlib.sha256(corruption.encode()).digest(), dtype=np.uint32).tolist()
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def order_indices(labels: np.ndarray, order: str, rng: np.random.Generator) -> np.ndarray:
    """Positions in the stream in the order they arrive; each once, or K times in a row for ``video:K``.

    >>> labels = np.array([2, 0, 1, 0, 2])
    >>> order_indices(labels, "sorted", np.random.default_rng(0)).tolist()
    [1, 3, 2, 0, 4]
    >>> order_indices(labels, "video:2", np.random.default_rng(0)).tolist()
    [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    """
    parsed = parse_order(order)
    if parsed.kind == "sorted":
        return class_sorted(labels)
    if parsed.kind == "dirichlet":
        return _dirichlet_indices(labels, parsed.alpha, rng)
    return np.repeat(np.arange(len(labels)), parsed.frames)


def _dirichlet_indices(labels: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    classes = np.unique(labels)
    slots = min(len(classes), MAX_SLOTS)
    shares = rng.dirichlet(np.full(slots, alpha), size=len(classes))
    members: list[list[np.ndarray]] = [[] for _ in range(slots)]
    for label, proportions in zip(classes, shares, strict=True):
        positions = np.flatnonzero(labels == label)
        cuts = (np.cumsum(proportions)[:-1] * len(positions)).astype(int)
        for slot, part in enumerate(np.split(positions, cuts)):
            members[slot].append(part)
    return np.concatenate([parts[order] for parts in members for order in rng.permutation(len(parts))])


def video_frames(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image (N×H×W×3 uint8) shifted by at most one pixel, edges repeated, plus pixel noise."""
    height, width = images.shape[1:3]
    frames = np.empty_like(images)
    for index, image in enumerate(images):
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge").astype(np.float32)
        top, left = rng.integers(0, 3, size=2)
        moved = padded[top : top + height, left : left + width]
        noisy = moved + FRAME_NOISE * rng.standard_normal(moved.shape, dtype=np.float32)
        frames[index] = np.clip(np.rint(noisy), 0, 255)
    return frames
