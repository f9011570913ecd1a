"""The ``--source`` grammar and the video reader: which stream a text names, frame-exact files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CLASSES, write_image_folder
from tests.streams.helpers import level, write_video
from tta_cli.errors import UsageError
from tta_cli.streams import CaptureStream, FolderStream, Framing, open_source


def index_of(frame_id: str) -> int:
    return int(frame_id.split("@")[0])


def test_the_grammar_names_each_kind_of_source(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=2)
    video = write_video(tmp_path / "clip.avi", 3)
    assert isinstance(open_source(str(data), Framing((32, 32)), CLASSES), FolderStream)
    assert isinstance(open_source(str(data / "cat" / "000.png"), Framing((32, 32))), FolderStream)
    assert isinstance(open_source(f"{data}/*/00[01].png", Framing((32, 32))), FolderStream)
    for text in ("0", "rtsp://127.0.0.1:8554/cam", "http://127.0.0.1:8080/stream.mjpg", "HTTPS://cam.local/x"):
        stream = open_source(text, Framing((32, 32)))
        assert isinstance(stream, CaptureStream) and stream.live and stream.length is None, text
    stream = open_source(str(video), Framing((32, 32)))
    assert isinstance(stream, CaptureStream) and not stream.live and stream.length == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{tmp}/missing", "does not exist"),
        ("{tmp}/notes.txt", "neither an image nor a video"),
        ("{tmp}/*.png", "no image files"),
        ("/dev/video-that-is-not-there", "is the device passed through"),
        ("ftp://127.0.0.1/clip.mp4", "unsupported scheme"),
    ],
)
def test_bad_sources_are_one_sentence(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.raises(UsageError, match=message):
        open_source(text.format(tmp=tmp_path), Framing((32, 32)))


def test_a_glob_keeps_labels_from_class_folders(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=3)
    frames = list(open_source(f"{data}/*/00[02].png", Framing((32, 32)), CLASSES))
    assert [frame.id for frame in frames] == [f"{name}/{n:03d}.png" for name in CLASSES for n in (0, 2)]
    assert [frame.label for frame in frames] == [0, 0, 1, 1, 2, 2]


def test_folder_stride_and_max_frames(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=4)
    stream = open_source(data, Framing((32, 32)), CLASSES, stride=3, max_frames=3)
    assert [frame.id for frame in stream] == ["cat/000.png", "cat/003.png", "dog/002.png"]


@pytest.mark.parametrize("suffix", [".avi", ".mkv", ".mp4"])
def test_a_video_file_gives_every_frame_in_order(tmp_path: Path, suffix: str) -> None:
    video = write_video(tmp_path / f"clip{suffix}", 40)
    frames = list(CaptureStream(video.as_posix(), Framing((32, 32)), live=False, queue_size=4))
    assert [frame.id for frame in frames] == [f"{index}@{index / 30:.3f}s" for index in range(40)]
    assert [frame.position for frame in frames] == list(range(40))
    assert all(frame.image.shape == (32, 32, 3) and frame.label is None for frame in frames)
    means = np.array([frame.image.mean() for frame in frames])
    assert np.abs(means - np.array([level(index) for index in range(40)])).max() < 3


def test_video_stride_max_frames_and_resume_are_frame_exact(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", 30)
    stream = open_source(video, Framing((32, 32)), stride=4, max_frames=6)
    assert stream.length == 6
    assert [(index_of(frame.id), frame.position) for frame in stream] == [(4 * p, p) for p in range(6)]
    resumed = open_source(video, Framing((32, 32)), stride=4, max_frames=6, start=4)
    frames = list(resumed)
    assert [(frame.id, frame.position) for frame in frames] == [("16@0.533s", 4), ("20@0.667s", 5)]
    assert abs(frames[0].image.mean() - level(16)) < 3


def damage_frames(video: Path, indices: list[int]) -> Path:
    """Overwrite the start of the JPEG data of the Motion-JPEG frames ``indices``."""
    data = bytearray(video.read_bytes())
    starts = [offset for offset in range(len(data) - 1) if data[offset : offset + 2] == b"\xff\xd8"]
    for index in indices:
        data[starts[index] + 2 : starts[index] + 200] = bytes(198)
    video.write_bytes(bytes(data))
    return video


def test_a_damaged_video_frame_is_skipped_and_counted_and_the_frames_after_it_arrive(tmp_path: Path) -> None:
    video = damage_frames(write_video(tmp_path / "clip.avi", 30), [15, 16])
    stream = open_source(video, Framing((32, 32)))
    frames = list(stream)
    expected = [index for index in range(30) if index not in (15, 16)]
    assert [(index_of(frame.id), frame.position) for frame in frames] == [(index, index) for index in expected]
    skipped = stream.skipped.drain()
    assert [(entry.input_id, entry.position) for entry in skipped] == [("15@0.500s", 15), ("16@0.533s", 16)]
    assert stream.failure is None
    # Resuming before, at and after the damage: every kept frame once, each damaged one counted once.
    for start in (10, 15, 20):
        resumed = open_source(video, Framing((32, 32)), stride=2, start=start // 2, max_frames=14)
        positions = [frame.position for frame in resumed]
        assert positions == [p for p in range(start // 2, 14) if p != 8], f"resumed at {start}"
        assert [entry.position for entry in resumed.skipped.drain()] == ([8] if start <= 16 else [])
