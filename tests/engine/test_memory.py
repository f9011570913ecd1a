from __future__ import annotations

import math

import torch

from tta_cli.engine.memory import ClassBalancedMemory


def offer(memory: ClassBalancedMemory, labels: list[int], entropy: float = 0.0, marker: float = 0.0) -> None:
    images = torch.full((len(labels), 1), marker)
    memory.add(images, torch.tensor(labels), torch.full((len(labels),), entropy))


def test_one_class_cannot_fill_the_memory_past_its_quota() -> None:
    memory = ClassBalancedMemory(capacity=4, num_classes=2)
    offer(memory, [0] * 10)
    assert memory.occupancy() == [2, 0]
    offer(memory, [1] * 10)
    assert memory.occupancy() == [2, 2]
    assert len(memory.images()) == 4


def test_a_full_memory_makes_room_in_the_most_occupied_class() -> None:
    memory = ClassBalancedMemory(capacity=4, num_classes=3)  # quota 4/3: two items per class at most
    offer(memory, [0, 0, 1, 1])
    assert memory.occupancy() == [2, 2, 0]
    offer(memory, [2])
    # The full memory evicts the worst item of classes 0 and 1 (tied at two): the oldest.
    assert memory.occupancy() == [1, 2, 1]


def test_fresh_confident_inputs_replace_old_uncertain_ones() -> None:
    memory = ClassBalancedMemory(capacity=2, num_classes=2)  # quota: one item per class
    offer(memory, [0], entropy=0.0, marker=1.0)
    offer(memory, [0], entropy=0.0, marker=2.0)
    # The old item (age 1) scores 1 / (1 + exp(-1/2)) ≈ 0.62 > the newcomer's 0.5: replaced.
    assert memory.images().flatten().tolist() == [2.0]
    # An uncertain newcomer (entropy log 2: score 0.5 + 1) does not displace a confident item.
    offer(memory, [0], entropy=math.log(2), marker=3.0)
    assert memory.images().flatten().tolist() == [2.0]
    assert memory.clock == 3


def test_clear_empties_it() -> None:
    memory = ClassBalancedMemory(capacity=4, num_classes=2)
    offer(memory, [0, 1])
    memory.clear()
    assert len(memory) == 0
