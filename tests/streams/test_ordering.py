from __future__ import annotations

import random

import numpy as np

from tta_cli.streams.ordering import class_sorted, seeded_shuffle


def test_a_seeded_shuffle_depends_on_the_seed_and_the_count_only() -> None:
    names = [f"{number:03d}.png" for number in range(50)]
    expected = list(names)
    random.Random(7).shuffle(expected)
    assert seeded_shuffle(names, 7) == expected
    assert names == sorted(names)  # the input is left as it was
    positions = seeded_shuffle(range(50), 7)
    assert [names[position] for position in positions] == expected
    assert seeded_shuffle(names, 8) != expected


def test_class_sorted_groups_by_label_and_keeps_the_order_within_a_class() -> None:
    labels = np.array([2, 0, 1, 0, 2, 1, 0])
    assert class_sorted(labels).tolist() == [1, 3, 6, 2, 5, 0, 4]
