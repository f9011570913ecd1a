"""The CIFAR-10-C / ImageNet-C corruptions: shapes, determinism, and numbers from docs/CIFAR10C.md."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tta_cli.corruptions import (
    CORRUPTIONS,
    HELD_OUT,
    SEVERITIES,
    corrupt,
    corrupt_folder,
    parameter_table,
)
from tta_cli.corruptions.weather import plasma_fractal

ALL_CORRUPTIONS = CORRUPTIONS + HELD_OUT


def textured_gradient(height: int = 32, width: int = 32) -> np.ndarray:
    """A smooth colour gradient with a fine texture, away from 0 and 255 so that noise is rarely clipped."""
    rows, cols = np.mgrid[0:height, 0:width] / max(height, width)
    texture = 0.08 * np.sin(cols * 40) * np.cos(rows * 25)
    image = np.stack([0.25 + 0.5 * cols, 0.25 + 0.5 * rows, 0.5 + 0 * rows], axis=-1) + texture[..., None]
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def constant(value: int, height: int = 32, width: int = 32) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def mean_abs_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def test_names_follow_the_benchmark_order() -> None:
    assert CORRUPTIONS == (
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
        "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
        "jpeg_compression",
    )  # fmt: skip
    assert HELD_OUT == ("speckle_noise", "spatter", "gaussian_blur", "saturate")
    for table in (parameter_table(32, 32), parameter_table(224, 224)):
        assert set(table) == set(ALL_CORRUPTIONS)
        assert all(len(severities) == 5 for severities in table.values())


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_every_severity_gives_uint8_of_the_same_shape_deterministically(name: str) -> None:
    image = textured_gradient()
    for severity in SEVERITIES:
        first = corrupt(image, name, severity, np.random.default_rng(7))
        again = corrupt(image, name, severity, np.random.default_rng(7))
        assert first.dtype == np.uint8 and first.shape == image.shape
        np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_other_sizes_use_the_imagenet_parameters(name: str) -> None:
    image = textured_gradient(40, 56)
    for severity in (1, 5):
        first = corrupt(image, name, severity, np.random.default_rng(3))
        assert first.dtype == np.uint8 and first.shape == image.shape
        np.testing.assert_array_equal(first, corrupt(image, name, severity, np.random.default_rng(3)))


def test_the_table_is_chosen_by_size() -> None:
    assert parameter_table(32, 32)["contrast"] == ((0.75,), (0.5,), (0.4,), (0.3,), (0.15,))
    assert parameter_table(32, 64)["contrast"] == ((0.4,), (0.3,), (0.2,), (0.1,), (0.05,))
    assert parameter_table(224, 224)["elastic_transform"][0] == pytest.approx(
        (2 * 244 / 224, 0.7 * 244 / 224, 0.1 * 244 / 224)
    )


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"])
def test_noise_grows_with_severity(name: str) -> None:
    image = textured_gradient()
    changes = [mean_abs_change(corrupt(image, name, s, np.random.default_rng(0)), image) for s in SEVERITIES]
    assert changes == sorted(changes) and changes[0] > 0


@pytest.mark.parametrize("name", ["contrast", "brightness", "zoom_blur", "fog"])
def test_deterministic_and_smooth_corruptions_grow_with_severity(name: str) -> None:
    image = textured_gradient()
    changes = [mean_abs_change(corrupt(image, name, s, np.random.default_rng(0)), image) for s in SEVERITIES]
    assert changes == sorted(changes)


def test_gaussian_noise_at_severity_5_has_sigma_0_10() -> None:
    noisy = corrupt(constant(128), "gaussian_noise", 5, np.random.default_rng(0)).astype(np.float64)
    assert noisy.std() == pytest.approx(0.10 * 255, abs=1.5)
    assert noisy.mean() == pytest.approx(127.5, abs=1.5)


def test_shot_noise_at_severity_5_has_poisson_spread() -> None:
    noisy = corrupt(constant(128), "shot_noise", 5, np.random.default_rng(0)).astype(np.float64)
    # Poisson(x·50)/50 has standard deviation sqrt(x/50).
    assert noisy.std() == pytest.approx(np.sqrt(128 / 255 / 50) * 255, rel=0.1)


def test_impulse_noise_at_severity_5_hits_seven_percent_of_values() -> None:
    noisy = corrupt(constant(128), "impulse_noise", 5, np.random.default_rng(0))
    assert np.isin(noisy, (0, 255)).mean() == pytest.approx(0.07, abs=0.015)


def test_contrast_at_severity_5_scales_towards_the_channel_mean_by_0_15() -> None:
    image = textured_gradient()
    means = image.mean(axis=(0, 1), keepdims=True)
    expected = (image - means) * 0.15 + means
    result = corrupt(image, "contrast", 5, np.random.default_rng(0))
    assert np.abs(result - expected).max() <= 1.0


def test_brightness_adds_to_the_hsv_value() -> None:
    grey = constant(100)
    for severity, shift in zip(SEVERITIES, (0.05, 0.1, 0.15, 0.2, 0.3), strict=True):
        result = corrupt(grey, "brightness", severity, np.random.default_rng(0))
        assert np.abs(result.astype(np.float64) - (100 + shift * 255)).max() <= 1.0


def test_saturate_scales_the_hsv_saturation() -> None:
    red = np.zeros((32, 32, 3), dtype=np.uint8)
    red[...] = (200, 100, 100)  # S = 0.5, V = 200
    result = corrupt(red, "saturate", 1, np.random.default_rng(0))  # S·0.3 → 0.15
    assert np.abs(result[0, 0].astype(np.float64) - (200, 170, 170)).max() <= 1.0


def test_pixelate_box_resizes_to_the_spec_sizes() -> None:
    image = textured_gradient()
    for severity, side in zip(SEVERITIES, (30, 28, 27, 24, 20), strict=True):
        expected = (
            Image.fromarray(image).resize((side, side), Image.Resampling.BOX).resize((32, 32), Image.Resampling.BOX)
        )
        result = corrupt(image, "pixelate", severity, np.random.default_rng(0))
        np.testing.assert_array_equal(result, np.asarray(expected))


def test_jpeg_compression_uses_the_spec_qualities() -> None:
    image = textured_gradient()
    for severity, quality in zip(SEVERITIES, (80, 65, 58, 50, 40), strict=True):
        buffer = BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        expected = np.asarray(Image.open(BytesIO(buffer.getvalue())).convert("RGB"))
        np.testing.assert_array_equal(corrupt(image, "jpeg_compression", severity, np.random.default_rng(0)), expected)


def test_gaussian_blur_keeps_a_flat_image_flat_and_smooths_texture() -> None:
    assert (corrupt(constant(90), "gaussian_blur", 5, np.random.default_rng(0)) == 90).all()
    image = textured_gradient()
    blurred = [corrupt(image, "gaussian_blur", s, np.random.default_rng(0)).astype(int) for s in SEVERITIES]
    roughness = [np.abs(np.diff(result, axis=1)).mean() for result in blurred]
    assert roughness == sorted(roughness, reverse=True)


def test_elastic_transform_at_severity_1_is_only_an_affine_warp() -> None:
    flat = constant(77)
    assert (corrupt(flat, "elastic_transform", 1, np.random.default_rng(0)) == 77).all()


def test_plasma_fractal_is_a_normalized_square_map() -> None:
    heights = plasma_fractal(32, 3, np.random.default_rng(0))
    assert heights.shape == (32, 32)
    assert heights.min() == 0 and heights.max() == 1
    with pytest.raises(ValueError, match="power of two"):
        plasma_fractal(30, 3, np.random.default_rng(0))


def test_frost_darkens_nothing_at_severity_1_and_adds_a_layer() -> None:
    image = textured_gradient()
    frosted = corrupt(image, "frost", 1, np.random.default_rng(0))  # 1·x + 0.2·frost
    assert (frosted >= image).all() and mean_abs_change(frosted, image) > 5


@pytest.mark.parametrize("bad_name", ["gaussian", "Gaussian_Noise", ""])
def test_unknown_names_are_rejected_with_the_valid_names(bad_name: str) -> None:
    with pytest.raises(
        ValueError, match=r"valid names are: gaussian_noise, shot_noise, .*, saturate, extreme_noise, .*\."
    ):
        corrupt(textured_gradient(), bad_name, 3, np.random.default_rng(0))


@pytest.mark.parametrize("bad_severity", [0, 6, -1, 2.5, True])
def test_severities_outside_1_to_5_are_rejected(bad_severity: object) -> None:
    with pytest.raises(ValueError, match="from 1 to 5"):
        corrupt(textured_gradient(), "fog", bad_severity, np.random.default_rng(0))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad_image", [np.zeros((32, 32, 3)), np.zeros((32, 32), np.uint8), np.zeros((32, 32, 4), np.uint8)]
)
def test_only_uint8_rgb_images_are_accepted(bad_image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        corrupt(bad_image, "fog", 3, np.random.default_rng(0))


def write_labeled_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for number in range(3):
            pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{number:04d}.jpg" if number else root / label / "0000.png")
    (root / "notes.txt").write_text("not a class folder")
    return root


def read_tree(root: Path) -> dict[str, np.ndarray]:
    return {path.relative_to(root).as_posix(): np.asarray(Image.open(path)) for path in sorted(root.rglob("*.png"))}


def test_corrupt_folder_writes_reproducible_pngs(tmp_path: Path) -> None:
    source = write_labeled_folder(tmp_path / "clean")
    assert corrupt_folder(source, tmp_path / "a", "shot_noise", 5, seed=1) == 6
    assert corrupt_folder(source, tmp_path / "b", "shot_noise", 5, seed=1) == 6
    first, again = read_tree(tmp_path / "a"), read_tree(tmp_path / "b")
    assert sorted(first) == [f"{label}/{number:04d}.png" for label in ("cat", "dog") for number in range(3)]
    for name, pixels in first.items():
        assert pixels.shape == (32, 32, 3)
        np.testing.assert_array_equal(pixels, again[name])
    assert corrupt_folder(source, tmp_path / "c", "shot_noise", 5, seed=2) == 6
    assert any(not np.array_equal(pixels, read_tree(tmp_path / "c")[name]) for name, pixels in first.items())


def test_corrupt_folder_results_do_not_depend_on_the_subset(tmp_path: Path) -> None:
    source = write_labeled_folder(tmp_path / "clean")
    corrupt_folder(source, tmp_path / "all", "glass_blur", 3, seed=0)
    assert corrupt_folder(source, tmp_path / "some", "glass_blur", 3, seed=0, limit_per_class=2) == 4
    everything, subset = read_tree(tmp_path / "all"), read_tree(tmp_path / "some")
    assert sorted(subset) == ["cat/0000.png", "cat/0001.png", "dog/0000.png", "dog/0001.png"]
    for name, pixels in subset.items():
        np.testing.assert_array_equal(pixels, everything[name])


def test_corrupt_folder_checks_its_arguments_before_writing(tmp_path: Path) -> None:
    source = write_labeled_folder(tmp_path / "clean")
    with pytest.raises(ValueError, match="valid names"):
        corrupt_folder(source, tmp_path / "out", "rain", 1, seed=0)
    with pytest.raises(ValueError, match="no class folders"):
        corrupt_folder(tmp_path / "clean" / "cat", tmp_path / "out", "fog", 1, seed=0)
    assert not (tmp_path / "out").exists()


def test_frost_covers_images_larger_than_its_photos() -> None:
    image = textured_gradient(700, 40)
    frosted = corrupt(image, "frost", 5, np.random.default_rng(0))
    assert frosted.shape == image.shape and frosted.dtype == np.uint8


def test_frost_without_its_photos_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from tta_cli.corruptions import weather

    monkeypatch.setattr(weather.importlib.util, "find_spec", lambda name: None)
    weather.frost_photo.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="pip install imagecorruptions"):
            corrupt(textured_gradient(), "frost", 1, np.random.default_rng(0))
    finally:
        weather.frost_photo.cache_clear()


def test_the_shifts_beyond_the_benchmark() -> None:
    from tta_cli.corruptions import BEYOND

    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[..., 0] = 200  # red
    rng = np.random.default_rng(0)
    assert set(BEYOND) == {"extreme_noise", "inverted", "low_light", "grayscale"}
    assert corrupt(image, "inverted", 5, rng)[0, 0].tolist() == [55, 255, 255]
    assert corrupt(image, "low_light", 1, rng)[0, 0].tolist() == [16, 0, 0]  # 200 · 0.08
    assert corrupt(image, "grayscale", 3, rng)[0, 0].tolist() == [59, 59, 59]  # 200 · 0.299 = 59.8, truncated
    noisy = corrupt(np.full((32, 32, 3), 128, np.uint8), "extreme_noise", 5, rng).astype(float)
    assert 90 < noisy.std() < 120  # σ = 0.5 · 255, clipped to [0, 255]
