"""A small class-balanced, time-aware memory of recent inputs for the update step to learn from.

On a stream whose labels arrive correlated (a camera on one scene, a folder sorted by class),
a gradient step on the current batch pushes the model towards that batch's few classes. The
memory keeps at most ``capacity / C`` inputs per predicted class and prefers fresh, confident
ones, so the step sees a balanced view of the recent past instead (RoTTA's category-balanced
sampling with timeliness and uncertainty, Yuan et al., CVPR 2023, section 3.3):

- an input joins if its predicted class is below its quota and the memory has room; if the
  memory is full, it replaces the worst item of the most occupied classes; if its class is at
  quota, it replaces that class's worst item;
- "worst" is the highest ``age score + uncertainty score``, with
  ``age score = 1 / (1 + exp(−age / capacity))`` (``age``: inputs offered since it joined) and
  ``uncertainty score = entropy / log C``; an input only replaces an item that scores worse.

The memory is a cache of inputs, not part of the model's state: snapshots do not hold it, and
after a rollback or a resume it fills again from the stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class _Item:
    image: torch.Tensor
    uncertainty: float
    born: int


class ClassBalancedMemory:
    def __init__(self, capacity: int, num_classes: int) -> None:
        if capacity < 1:
            raise ValueError(f"Memory capacity must be at least 1, got {capacity}.")
        self.capacity = capacity
        self.num_classes = num_classes
        self.quota = capacity / num_classes
        self.classes: list[list[_Item]] = [[] for _ in range(num_classes)]
        self.clock = 0
        """Inputs offered so far: an item's age is ``clock − born``."""

    def __len__(self) -> int:
        return sum(len(items) for items in self.classes)

    def occupancy(self) -> list[int]:
        return [len(items) for items in self.classes]

    def clear(self) -> None:
        self.classes = [[] for _ in range(self.num_classes)]

    def add(self, images: torch.Tensor, predictions: torch.Tensor, entropy: torch.Tensor) -> None:
        """Offer a batch's inputs, in stream order, with their predicted class and entropy."""
        uncertainties = (entropy / math.log(max(self.num_classes, 2))).tolist()
        for image, label, uncertainty in zip(images.detach(), predictions.tolist(), uncertainties, strict=True):
            if self._make_room(label, self._score(self.clock, uncertainty)):
                self.classes[label].append(_Item(image, uncertainty, self.clock))
            self.clock += 1

    def images(self) -> torch.Tensor:
        """The stored inputs as one batch (class by class)."""
        return torch.stack([item.image for items in self.classes for item in items])

    def _score(self, born: int, uncertainty: float) -> float:
        return 1 / (1 + math.exp(-(self.clock - born) / self.capacity)) + uncertainty

    def _make_room(self, label: int, score: float) -> bool:
        if len(self.classes[label]) < self.quota:
            if len(self) < self.capacity:
                return True
            occupancy = self.occupancy()
            most = max(occupancy)
            return self._evict([c for c, count in enumerate(occupancy) if count == most], score)
        return self._evict([label], score)

    def _evict(self, classes: list[int], score: float) -> bool:
        """Drop the worst item of ``classes`` if it scores worse than ``score``."""
        worst, worst_score = None, score
        for c in classes:
            for index, item in enumerate(self.classes[c]):
                item_score = self._score(item.born, item.uncertainty)
                if item_score > worst_score:
                    worst, worst_score = (c, index), item_score
        if worst is None:
            return False
        del self.classes[worst[0]][worst[1]]
        return True
