from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CLASSES, write_image_folder
from tta_cli.bench import streams as bench_streams
from tta_cli.bench.streams import build_streams, select_images
from tta_cli.errors import UsageError
from tta_cli.streams import Framing


def build(data: Path, cache: Path, **settings):
    options = {"num_examples": 9, "seed": 3, "cache_dir": cache, **settings}
    return build_streams(data, CLASSES, ("gaussian_noise", "fog"), 5, Framing((32, 32)), **options)


def test_streams_are_deterministic_and_cached(clean_folder: Path, tmp_path: Path, monkeypatch) -> None:
    corrupted = []
    first = build(clean_folder, tmp_path / "a", on_image=corrupted.append)
    assert corrupted == ["gaussian_noise"] * 9 + ["fog"] * 9
    elsewhere = build(clean_folder, tmp_path / "b")

    def refuse(*args, **kwargs):
        raise AssertionError("a cached stream was corrupted again")

    monkeypatch.setattr(bench_streams, "corrupt", refuse)
    again = build(clean_folder, tmp_path / "a")
    for one, two, three in zip(first, elsewhere, again, strict=True):
        assert one.ids == two.ids == three.ids
        assert np.array_equal(one.images, two.images) and np.array_equal(one.images, three.images)
        assert np.array_equal(one.labels, three.labels)
    assert str(first[0].folder).startswith(str(tmp_path / "a"))


def test_every_corruption_holds_the_same_images_in_the_same_seeded_order(clean_folder: Path, tmp_path: Path) -> None:
    noise, fog = build(clean_folder, tmp_path)
    assert noise.ids == fog.ids and len(noise) == 9
    assert [Path(i).parts[0] for i in noise.ids] == [CLASSES[label] for label in noise.labels]
    chosen = [f"{p.parent.as_posix()}/{p.stem}.png" for p in select_images(clean_folder, CLASSES, 9, 3)]
    assert noise.ids == chosen
    assert chosen != sorted(chosen)  # shuffled, not in folder order
    assert not np.array_equal(noise.images, fog.images)


def test_a_new_seed_or_subset_gets_its_own_cache_entry(clean_folder: Path, tmp_path: Path) -> None:
    base = build(clean_folder, tmp_path)[0].folder.parent
    assert build(clean_folder, tmp_path, seed=4)[0].folder.parent != base
    assert build(clean_folder, tmp_path, num_examples=5)[0].folder.parent != base


def test_bad_inputs_are_usage_errors(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=1)
    with pytest.raises(UsageError, match="Unknown corruption"):
        build_streams(data, CLASSES, ("fogg",), 5, Framing((32, 32)), cache_dir=tmp_path / "c")
    with pytest.raises(UsageError, match="one sub-folder per class"):
        build_streams(data, ("cat", "dog"), ("fog",), 5, Framing((32, 32)), cache_dir=tmp_path / "c")


def test_images_that_are_not_32_pixels_get_imagenet_c_parameters(tmp_path: Path) -> None:
    """Gaussian noise at severity 5: σ 0.10 for CIFAR-10-C, 0.38 for ImageNet-C (of the [0, 1] range)."""
    spreads = {}
    for size in (32, 48):
        data = tmp_path / f"gray{size}"
        (data / "cat").mkdir(parents=True)
        Image.fromarray(np.full((size, size, 3), 128, dtype=np.uint8)).save(data / "cat" / "0.png")
        [stream] = build_streams(data, CLASSES, ("gaussian_noise",), 5, Framing((32, 32)), cache_dir=tmp_path / "cache")
        with Image.open(stream.folder / stream.ids[0]) as written:
            pixels = np.asarray(written, dtype=np.float64) / 255
        assert pixels.shape[:2] == (size, size)  # corrupted at the folder's own size
        spreads[size] = pixels.std()
    assert spreads[32] == pytest.approx(0.10, abs=0.02)
    assert spreads[48] == pytest.approx(0.38, abs=0.06)


def test_a_stream_another_process_finished_first_is_kept_not_replaced(
    clean_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    """Two benches on one cache: the one that finishes second discards its own build, since the
    first one's may be being read."""
    (first,) = build_streams(clean_folder, CLASSES, ("fog",), 5, Framing((32, 32)), 9, 3, tmp_path)
    marker = first.folder / bench_streams.COMPLETE
    written = marker.stat().st_mtime_ns
    monkeypatch.setattr(bench_streams, "_is_complete", lambda folder, name, severity: marker.is_file())
    files = select_images(clean_folder, CLASSES, 9, 3)
    bench_streams._build(clean_folder, files, "fog", 5, 3, first.folder, None)
    assert marker.stat().st_mtime_ns == written
    assert [path.name for path in first.folder.parent.iterdir()] == [first.folder.name]  # no staging left


def test_images_that_differ_only_in_suffix_stay_two_images(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=2)
    for path in (data / "cat").glob("*.png"):
        Image.open(path).save(path.with_suffix(".jpg"))
    (fog,) = build_streams(data, CLASSES, ("fog",), 5, Framing((32, 32)), None, 0, tmp_path / "cache")
    assert len(fog) == 8 and len(set(fog.ids)) == 8
    assert {"cat/000.jpg.png", "cat/000.png.png"} <= set(fog.ids)
