"""Framing an image into the model's input: timm's geometry, the same for files and video frames."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import ExifTags, Image

from tests.streams.helpers import write_video
from tta_cli.config import Interpolation
from tta_cli.streams import Framing, open_source
from tta_cli.streams.decode import decode_image, to_rgb_array
from tta_cli.streams.sources import frame_array

BLOCK = 2
ROWS, COLUMNS = 4, 8


def block_colours() -> np.ndarray:
    """A ``ROWS × COLUMNS`` grid of distinct RGB colours: red tells the column, green the row."""
    row, column = np.mgrid[0:ROWS, 0:COLUMNS]
    return np.stack([10 + 30 * column, 10 + 60 * row, 7 * (COLUMNS * row + column)], axis=-1).astype(np.uint8)


def blocks() -> np.ndarray:
    """An 8×16 RGB image of uniform 2×2 blocks: halving it with nearest or box gives the grid."""
    return block_colours().repeat(BLOCK, axis=0).repeat(BLOCK, axis=1)


def smooth(height: int, width: int) -> np.ndarray:
    """Gradients and a slow wave: a one-pixel shift of the crop changes many values by several levels."""
    y, x = np.mgrid[0:height, 0:width].astype(float)
    wave = 127.5 + 100 * np.sin(x / 7) * np.cos(y / 9)
    return np.stack([255 * x / (width - 1), 255 * y / (height - 1), wave], axis=-1).round().astype(np.uint8)


def with_pil(image: np.ndarray, framing: Framing) -> np.ndarray:
    return to_rgb_array(image, framing)


def with_opencv(image: np.ndarray, framing: Framing) -> np.ndarray:
    return frame_array(np.ascontiguousarray(image[..., ::-1]), framing)  # OpenCV delivers BGR


PATHS = {"pil": with_pil, "opencv": with_opencv}


def test_the_scale_is_floor_of_size_over_crop_pct_without_losing_a_pixel_to_float_error() -> None:
    assert Framing((224, 224), crop_pct=0.875).scale == (256, 256)
    assert Framing((224, 224), crop_pct=224 / 232).scale == (232, 232)  # 224 / (224 / 232) < 232 in floats
    assert Framing((224, 224), crop_pct=0.95).scale == (235, 235)  # floor(235.79), as timm
    assert Framing((32, 48), crop_pct=0.5).scale == (64, 96)


def test_resized_sizes_follow_timm_and_torchvision() -> None:
    # squash: exactly the scale, whatever the image's aspect ratio
    assert Framing((224, 224), 0.875, "squash").resized(480, 640) == (256, 256)
    # center, square input: torchvision's Resize(int), the longer side truncated
    assert Framing((224, 224), 0.875, "center").resized(480, 640) == (256, 341)
    assert Framing((224, 224), 0.875, "center").resized(640, 480) == (341, 256)
    # center, non-square input: timm's ResizeKeepRatio, the relatively shorter side reaches its scale
    assert Framing((224, 320), 1.0, "center").resized(480, 640) == (240, 320)
    assert Framing((224, 320), 1.0, "center").resized(500, 500) == (320, 320)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("interpolation", ["nearest", "box"])
@pytest.mark.parametrize(
    ("framing", "rows", "columns"),
    [
        # 8×16 squashed to the scale 4×8 (the grid), its centre 2×4 cut: top 1, left 2
        (Framing((2, 4), 0.5, "squash"), slice(1, 3), slice(2, 6)),
        # the shorter side (8) to 4 keeps the ratio: 4×8, centre 4×4 from the left 2
        (Framing((4, 4), 1.0, "center"), slice(0, 4), slice(2, 6)),
        # non-square input 4×2: the ratio min(8 / 4, 16 / 2) = 2 gives 4×8, centre 4×2 from the left 3
        (Framing((4, 2), 1.0, "center"), slice(0, 4), slice(3, 5)),
    ],
)
def test_framing_cuts_the_expected_blocks(
    path: str, interpolation: Interpolation, framing: Framing, rows: slice, columns: slice
) -> None:
    framed = PATHS[path](blocks(), replace(framing, interpolation=interpolation))
    np.testing.assert_array_equal(framed, block_colours()[rows, columns])


@pytest.mark.parametrize("path", PATHS)
def test_crop_pct_below_one_cuts_the_centre_of_an_image_already_at_scale(path: str) -> None:
    # scale 8 = the shorter side: no resize, the centre 4×4 of 8×16 is rows 2-5, columns 6-9
    framed = PATHS[path](blocks(), Framing((4, 4), 0.5, "center", "bicubic"))
    np.testing.assert_array_equal(framed, blocks()[2:6, 6:10])


def test_the_default_framing_is_the_plain_bilinear_resize_of_bundles_before_it() -> None:
    image = smooth(20, 30)
    before = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(to_rgb_array(image, Framing((32, 32))), before)


@pytest.mark.parametrize(
    ("shape", "framing"),
    [
        ((120, 90), Framing((32, 48), 0.875, "center", "bilinear")),
        ((90, 120), Framing((40, 40), 0.875, "center", "bilinear")),
        ((120, 90), Framing((40, 40), 0.9, "squash", "bicubic")),
        ((60, 90), Framing((32, 32))),
        ((20, 30), Framing((64, 64), 1.0, "center", "bicubic")),  # enlarged
    ],
)
def test_files_and_video_frames_are_framed_alike(shape: tuple[int, int], framing: Framing) -> None:
    image = smooth(*shape)
    from_file, from_video = (frame(image, framing).astype(int) for frame in (with_pil, with_opencv))
    assert from_file.shape == from_video.shape == (*framing.size, 3)
    difference = np.abs(from_file - from_video)
    assert difference.mean() < 1 and difference.max() <= 6  # the libraries' filters, not the geometry


def test_a_decoded_file_and_a_video_source_use_the_framing(tmp_path: Path) -> None:
    picture = tmp_path / "blocks.png"
    Image.fromarray(blocks()).save(picture)
    framing = Framing((4, 2), 1.0, "center", "nearest")
    np.testing.assert_array_equal(decode_image(picture, framing), block_colours()[:, 3:5])
    video = write_video(tmp_path / "clip.avi", 2, size=(48, 64))
    frames = list(open_source(video, Framing((16, 24), 0.5, "center")))
    assert [frame.image.shape for frame in frames] == [(16, 24, 3)] * 2


def test_a_photo_is_decoded_upright_as_its_exif_orientation_says(tmp_path: Path) -> None:
    """A phone held sideways stores the pixels as the sensor saw them and says how to turn
    them; OpenCV turns them too, so files and video frames agree."""
    stored = blocks()  # 8 × 16
    framing = Framing((16, 8), 1.0, "squash", "nearest")
    for orientation, upright in [
        (1, stored),
        (3, stored[::-1, ::-1]),
        (6, np.rot90(stored, -1)),
        (8, np.rot90(stored)),
    ]:
        picture = tmp_path / f"turned-{orientation}.png"
        image = Image.fromarray(stored)
        exif = image.getexif()
        exif[ExifTags.Base.Orientation] = orientation
        image.save(picture, exif=exif.tobytes())
        if orientation in (1, 3):
            upright = upright.repeat(2, axis=0)[:, ::2]  # squashed to 16 × 8 by nearest
        np.testing.assert_array_equal(decode_image(picture, framing), upright, err_msg=str(orientation))


def test_a_photo_whose_exif_is_malformed_is_still_read(tmp_path: Path) -> None:
    picture = tmp_path / "odd-exif.png"
    image = Image.fromarray(blocks())
    exif = image.getexif()
    exif[ExifTags.Base.Orientation] = 6
    malformed = exif.tobytes().replace(b"MM\x00*", b"XX\x00*")  # not a TIFF header: Pillow raises
    image.save(picture, exif=malformed)
    np.testing.assert_array_equal(decode_image(picture, Framing((8, 16), 1.0, "squash", "nearest")), blocks())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"crop_pct": 1.5}, r"crop_pct must be in \(0, 1\]"),
        ({"crop_pct": 0}, r"crop_pct must be in \(0, 1\]"),
        ({"size": (0, 32)}, "input size must be positive"),
        ({"crop_mode": "border"}, "Crop mode 'border' is not supported; use squash or center"),
        ({"interpolation": "lanczos"}, "Interpolation 'lanczos' is not supported"),
    ],
)
def test_framing_refuses_what_it_cannot_do(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Framing(**{"size": (32, 32), **settings})
