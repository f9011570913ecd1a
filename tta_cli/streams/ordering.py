"""The two orders that several readers of images share, each written once: a seeded shuffle
(a folder run's ``--order shuffled``, the benchmark's choice of images, MGG's pre-training
images) and grouping by class (the benchmark's ``sorted``). The same seed gives the same
order wherever it is used, on every machine and Python version.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import TypeVar

import numpy as np

Item = TypeVar("Item")


def seeded_shuffle(items: Iterable[Item], seed: int) -> list[Item]:
    """``items`` in a random order fixed by ``seed`` (``random.Random(seed).shuffle``, whose
    order depends only on the seed and the number of items, not on what they are).

    >>> seeded_shuffle(range(8), 3)
    [0, 5, 7, 2, 1, 6, 4, 3]
    """
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def class_sorted(labels: np.ndarray) -> np.ndarray:
    """Positions of ``labels`` grouped by class in label order, each class keeping its images'
    order (a stable sort).

    >>> class_sorted(np.array([2, 0, 1, 0, 2])).tolist()
    [1, 3, 2, 0, 4]
    """
    return np.argsort(labels, kind="stable")
