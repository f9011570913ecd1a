from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CLASSES, write_image_folder
from tta_cli.bench.orders import order_indices, parse_order, video_frames
from tta_cli.bench.streams import ShiftedStream, build_streams
from tta_cli.errors import UsageError
from tta_cli.streams import Framing

# Ten classes of 100 images each, in a shuffled (i.i.d.) order.
LABELS = np.random.default_rng(7).permutation(np.repeat(np.arange(10), 100))


def mean_run_length(labels: np.ndarray) -> float:
    """Images per run of one class: 1 + 1/C on average for i.i.d. labels over C classes."""
    changes = np.count_nonzero(labels[1:] != labels[:-1])
    return len(labels) / (changes + 1)


@pytest.mark.parametrize("order", ["shuffled", "sorted", "dirichlet:0.1", "dirichlet:10"])
def test_every_order_is_a_permutation_of_the_stream(order: str) -> None:
    indices = order_indices(LABELS, order, np.random.default_rng(0))
    assert sorted(indices.tolist()) == list(range(len(LABELS)))


def test_shuffled_keeps_the_streams_own_order() -> None:
    assert order_indices(LABELS, "shuffled", np.random.default_rng(0)).tolist() == list(range(len(LABELS)))


def test_sorted_groups_classes_and_keeps_the_order_within_a_class() -> None:
    indices = order_indices(LABELS, "sorted", np.random.default_rng(0))
    assert LABELS[indices].tolist() == sorted(LABELS.tolist())
    for label in range(10):
        within = indices[LABELS[indices] == label]
        assert within.tolist() == [position for position, value in enumerate(LABELS) if value == label]


def classes_per_window(labels: np.ndarray, window: int = 100) -> float:
    return float(np.mean([len(np.unique(labels[start : start + window])) for start in range(0, len(labels), window)]))


def arrival(order: str) -> np.ndarray:
    return LABELS[order_indices(LABELS, order, np.random.default_rng(0))]


def test_dirichlet_with_small_alpha_gives_long_runs_of_few_classes() -> None:
    assert mean_run_length(arrival("shuffled")) == pytest.approx(1.1, abs=0.05)
    assert mean_run_length(arrival("dirichlet:0.1")) > 10 * mean_run_length(arrival("shuffled"))
    assert classes_per_window(arrival("shuffled")) == 10
    assert classes_per_window(arrival("dirichlet:0.1")) < 6


def test_dirichlet_with_large_alpha_mixes_every_class_into_every_slot() -> None:
    """Ten slots of 100 images: each holds about ten images of each class, as one run per class."""
    labels = arrival("dirichlet:1000")
    assert classes_per_window(labels) == 10
    assert mean_run_length(labels) == pytest.approx(10, abs=1)


def test_dirichlet_is_deterministic_by_seed() -> None:
    def draw(seed: int) -> list[int]:
        return order_indices(LABELS, "dirichlet:0.1", np.random.default_rng(seed)).tolist()

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("random", "Unknown order 'random'"),
        ("dirichlet", "Unknown order 'dirichlet'"),
        ("dirichlet:0", "ALPHA above 0"),
        ("dirichlet:-1", "ALPHA above 0"),
        ("dirichlet:x", "ALPHA above 0"),
        ("dirichlet:nan", "ALPHA above 0"),
        ("video:0", "K ≥ 1"),
        ("video:1.5", "K ≥ 1"),
    ],
)
def test_bad_orders_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_order(text)


def stream(corruption: str) -> ShiftedStream:
    images = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    ids = [f"{CLASSES[label]}/{index}.png" for index, label in enumerate(labels)]
    return ShiftedStream(corruption, 5, Path("."), ids, images, labels)


def test_reordered_streams_are_deterministic_per_corruption() -> None:
    first, again, other = (stream(name).reordered("dirichlet:0.1", 0) for name in ("fog", "fog", "snow"))
    assert first.ids == again.ids
    assert first.ids != other.ids or not np.array_equal(first.labels, other.labels)
    original = stream("fog")
    for image_id, label, image in zip(first.ids, first.labels, first.images, strict=True):
        position = original.ids.index(image_id)
        assert label == original.labels[position] and np.array_equal(image, original.images[position])


def test_video_plays_each_image_as_k_near_identical_frames() -> None:
    original = stream("fog")
    video = original.reordered("video:3", 0)
    assert len(video) == 3 * len(original)
    first, second = original.ids[:2]
    assert video.ids[:4] == [f"{first}#1", f"{first}#2", f"{first}#3", f"{second}#1"]
    assert video.labels.tolist() == np.repeat(original.labels, 3).tolist()
    frames = video.images[:3].astype(int)
    assert not np.array_equal(frames[0], frames[1])  # independent perturbations
    assert np.array_equal(video.images, original.reordered("video:3", 0).images)  # seeded


def test_a_video_frame_is_its_image_moved_by_at_most_one_pixel_plus_small_noise() -> None:
    image = np.tile(np.arange(40, 200, 20, dtype=np.uint8)[None, :, None], (8, 1, 3))  # columns 40, 60 ... 180
    frames = video_frames(np.repeat(image[None], 200, axis=0), np.random.default_rng(0)).astype(int)
    inner = frames[:, :, 1:-1]
    shifts = np.rint((inner - image[:, 1:-1].astype(int)).mean(axis=(1, 2, 3)) / 20)
    assert set(shifts.tolist()) == {-1.0, 0.0, 1.0}
    residual = inner - (image[:, 1:-1].astype(int) + 20 * shifts[:, None, None, None])
    assert residual.std() == pytest.approx(2.0, abs=0.2)


# Recorded with the code of commit 79a34bb: a benchmark stream's images and their order are part
# of every published figure, so a change to how folders are listed or shuffled must keep them.
RECORDED_ORDERS = {
    "shuffled": ["cat/001", "dog/003", "ship/002", "cat/000", "dog/002", "ship/003", "dog/000", "dog/001", "cat/002"],
    "sorted": ["cat/001", "cat/000", "cat/002", "dog/003", "dog/002", "dog/000", "dog/001", "ship/002", "ship/003"],
    "dirichlet:0.1": [
        "ship/002",
        "dog/003",
        "dog/002",
        "dog/000",
        "dog/001",
        "cat/001",
        "cat/000",
        "cat/002",
        "ship/003",
    ],
}


@pytest.mark.parametrize("order", [*RECORDED_ORDERS, "video:2"])
def test_a_benchmark_stream_keeps_its_recorded_images_and_order(order: str, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=4)
    (stream,) = build_streams(
        data, CLASSES, ("fog",), 5, Framing((32, 32)), num_examples=9, seed=3, cache_dir=tmp_path / "c"
    )
    played = stream.reordered(order, 1)
    if order == "video:2":
        expected = [f"{image}.png#{frame}" for image in RECORDED_ORDERS["shuffled"] for frame in (1, 2)]
    else:
        expected = [f"{image}.png" for image in RECORDED_ORDERS[order]]
    assert played.ids == expected
    assert played.labels.tolist() == [CLASSES.index(image.split("/")[0]) for image in expected]
