from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CLASSES, write_image_folder
from tta_cli.config import AdaptConfig
from tta_cli.engine import adapt
from tta_cli.errors import UsageError
from tta_cli.events import EventKind
from tta_cli.history import read_history
from tta_cli.streams import FolderStream, Framing, Preprocess, batches, labeled_images


def add_broken_files(root: Path) -> dict[str, str]:
    """One file of every broken kind, inside a class folder so it would count if read."""
    good = root / "cat" / "000.png"
    data = good.read_bytes()
    (root / "cat" / "truncated.png").write_bytes(data[: len(data) // 2])
    jpeg = root / "dog" / "truncated.jpg"
    Image.open(good).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "ship" / "notes.png").write_text("this is not an image")
    return {"cat/truncated.png", "dog/truncated.jpg", "dog/empty.jpg", "ship/notes.png"}


def test_sorted_recursive_order_and_labels(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=2)
    (root / "ship" / "nested").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "ship" / "nested" / "a.png")
    (root / "unknown").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "unknown" / "b.png")
    frames = list(FolderStream(root, Framing((32, 32)), CLASSES))
    assert [f.id for f in frames] == sorted(f.id for f in frames)
    labels = {f.id: f.label for f in frames}
    assert labels["cat/000.png"] == 0 and labels["ship/001.png"] == 2
    assert labels["ship/nested/a.png"] == 2
    assert labels["unknown/b.png"] is None
    assert all(f.image.shape == (32, 32, 3) and f.image.dtype == np.uint8 for f in frames)


def test_labeled_images_at_any_depth_or_as_a_labeled_data_set(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=1)
    pixels = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    (root / "ship" / "nested").mkdir()
    pixels.save(root / "ship" / "nested" / "a.png")
    pixels.save(root / "loose.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    elsewhere = tmp_path / "elsewhere" / "dog"
    elsewhere.mkdir(parents=True)
    pixels.save(elsewhere / "linked.png")
    (root / "dog").rename(tmp_path / "dog")
    (root / "dog").symlink_to(elsewhere)  # a class folder that is a link

    def named(pairs: list[tuple[Path, int | None]]) -> list[tuple[str, int | None]]:
        return [(path.relative_to(root).as_posix(), label) for path, label in pairs]

    # Every depth: Path.glob("**/*") does not enter a linked folder.
    assert named(labeled_images(root, CLASSES)) == [
        ("cat/000.png", 0),
        ("loose.png", None),
        ("ship/000.png", 2),
        ("ship/nested/a.png", 2),
    ]
    # A labeled data set, root/<class>/<image>: a linked class folder is read.
    assert named(labeled_images(root, CLASSES, "*/*")) == [
        ("cat/000.png", 0),
        ("dog/linked.png", 1),
        ("ship/000.png", 2),
    ]


def test_broken_files_are_skipped_and_named(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=3)
    broken = add_broken_files(root)
    stream = FolderStream(root, Framing((32, 32)), CLASSES, workers=3)
    frames = list(stream)
    assert len(frames) == 9
    skipped = stream.skipped.drain()
    assert {entry.input_id for entry in skipped} == broken
    assert all(entry.reason for entry in skipped)
    assert stream.skipped.total == len(broken)


def test_a_folder_that_cannot_be_listed_is_named_in_the_history_and_summary(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Running as root, permissions cannot hide a folder; a listing that fails as one does can.
    root = write_image_folder(tmp_path / "data", per_class=2)
    locked = root / "dog"
    listing = os.scandir

    def scandir(path: str | os.PathLike[str] = ".") -> Iterator[os.DirEntry[str]]:
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    stream = FolderStream(root, Framing((32, 32)), CLASSES)
    assert len(stream) == 2 * (len(CLASSES) - 1)
    assert [(event.kind, event.detail) for event in stream.events.drain()] == [
        (EventKind.FOLDER_NOT_LISTED, f"{locked}: Permission denied")
    ]
    summary = adapt(AdaptConfig(model=bundle_path, source=root, run=tmp_path / "run", method="norm", batch_size=4))
    assert summary.folders_not_listed == [f"{locked}: Permission denied"]
    assert EventKind.FOLDER_NOT_LISTED in {event["kind"] for event in read_history(tmp_path / "run")["events"]}


@pytest.mark.parametrize(
    ("mode", "array"),
    [
        ("L", np.full((10, 12), 200, np.uint8)),
        ("RGBA", np.full((10, 12, 4), 200, np.uint8)),
        ("I;16", np.full((10, 12), 65535 * 200 // 255, np.uint16)),
    ],
)
def test_grayscale_rgba_and_16_bit_become_rgb(tmp_path: Path, mode: str, array: np.ndarray) -> None:
    path = tmp_path / "cat" / "image.png"
    path.parent.mkdir()
    Image.fromarray(array).save(path)
    assert Image.open(path).mode.startswith(mode[0])
    (frame,) = FolderStream(tmp_path, Framing((32, 32)), CLASSES)
    assert frame.image.shape == (32, 32, 3)
    assert np.abs(frame.image.astype(int) - 200).max() <= 1


def test_shuffled_order_is_a_seeded_permutation(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=4)
    first = [f.id for f in FolderStream(root, Framing((32, 32)), CLASSES, order="shuffled", seed=3)]
    again = [f.id for f in FolderStream(root, Framing((32, 32)), CLASSES, order="shuffled", seed=3)]
    assert first == again and first != sorted(first) and sorted(first) == sorted(again)


def test_folder_orders_keep_their_recorded_files(tmp_path: Path) -> None:
    """Recorded with the code of commit 79a34bb: a run's order must not change under a refactor."""
    root = write_image_folder(tmp_path / "data", per_class=4)
    played = {
        order: [f.id for f in FolderStream(root, Framing((32, 32)), CLASSES, order, seed=3)]
        for order in ("sorted", "shuffled")
    }
    assert played["sorted"] == [f"{name}/{number:03d}.png" for name in CLASSES for number in range(4)]
    shuffled = ["cat/001", "dog/003", "ship/002", "cat/000", "dog/002", "ship/003"]
    shuffled += ["dog/000", "dog/001", "cat/002", "ship/000", "ship/001", "cat/003"]
    assert played["shuffled"] == [f"{image}.png" for image in shuffled]


def test_missing_and_empty_sources(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        FolderStream(tmp_path / "nope", Framing((32, 32)))
    with pytest.raises(UsageError, match="no image files"):
        FolderStream(tmp_path, Framing((32, 32)))


def test_batches_normalise_with_the_bundle_statistics(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=3)
    stream = FolderStream(root, Framing((32, 32)), CLASSES)
    groups = list(batches(stream, 4, Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))))
    assert [len(b) for b in groups] == [4, 4, 1]
    first = next(iter(stream)).image
    expected = (first[0, 0, 0] / 255 - 0.5) / 0.25
    assert groups[0].images[0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-5)
    assert groups[0].labels.tolist() == [0, 0, 0, 1]
