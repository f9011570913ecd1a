"""Small media for the stream tests: videos written with OpenCV, JPEG frames for MJPEG."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tta_cli.bench.mjpeg import encode_jpegs


def level(index: int) -> int:
    """The grey level of frame ``index`` of a test video: far enough apart to tell frames apart."""
    return (index * 6) % 240 + 8


def write_video(path: Path, frames: int, size: tuple[int, int] = (48, 64), fps: float = 30.0) -> Path:
    """``frames`` uniform grey frames (see ``level``), Motion-JPEG in the container of the suffix."""
    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {path.suffix}"
    for index in range(frames):
        writer.write(np.full((height, width, 3), level(index), np.uint8))
    writer.release()
    return path


def card_jpegs(count: int = 30, size: tuple[int, int] = (48, 64)) -> list[bytes]:
    """JPEG frames of changing colour, as a camera would send them."""
    height, width = size
    return encode_jpegs([np.full((height, width, 3), level(index), np.uint8) for index in range(count)])
