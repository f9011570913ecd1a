"""Write a corrupted copy of a labeled image folder (``<class>/<file>``) as lossless PNGs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from tta_cli.corruptions.benchmark import check_corruption, corrupt
from tta_cli.files import atomic_path
from tta_cli.streams.decode import open_upright

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff"})


def corrupt_folder(
    src: Path, dst: Path, name: str, severity: int, seed: int, limit_per_class: int | None = None
) -> int:
    """Corrupt every image under ``src/<class>/`` into ``dst/<class>/<stem>.png``; return how many.

    Each image gets its own generator from (seed, corruption, severity, relative path), so the
    output does not depend on the order, the subset or the parallelism of processing. PNG keeps
    the corruption exactly as computed; a JPEG would re-encode it. ``limit_per_class`` takes the
    first files of each class in name order.
    """
    check_corruption(name, severity)
    if seed < 0:
        raise ValueError(f"The seed must be a non-negative integer, got {seed}.")
    if limit_per_class is not None and limit_per_class < 0:
        raise ValueError(f"limit_per_class must be non-negative, got {limit_per_class}.")
    class_folders = sorted(path for path in Path(src).iterdir() if path.is_dir())
    if not class_folders:
        raise ValueError(f"{src} has no class folders; expected images under {src}/<class>/.")
    written = 0
    for class_folder in class_folders:
        for source in class_images(class_folder)[:limit_per_class]:
            relative = source.relative_to(src)
            pixels = np.asarray(open_upright(source).convert("RGB"))
            corrupted = corrupt(pixels, name, severity, image_rng(seed, name, severity, relative))
            save_png(corrupted, Path(dst) / relative.parent / f"{source.stem}.png")
            written += 1
    return written


def class_images(class_folder: Path) -> list[Path]:
    """The images of one class in name order; two files that would both become ``<stem>.png`` are an error."""
    images = sorted(path for path in class_folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    stems = [path.stem for path in images]
    if len(set(stems)) != len(stems):
        clashing = sorted({stem for stem in stems if stems.count(stem) > 1})
        raise ValueError(f"{class_folder} holds several images named {clashing[0]}.*; their PNGs would collide.")
    return images


def image_rng(seed: int, name: str, severity: int, relative_path: Path) -> np.random.Generator:
    """A generator for one image, independent of every other image's.

    >>> a = image_rng(0, "fog", 5, Path("cat/0001.jpg")).random()
    >>> b = image_rng(0, "fog", 5, Path("cat/0001.jpg")).random()
    >>> a == b, a == image_rng(0, "fog", 5, Path("cat/0002.jpg")).random()
    (True, False)
    """
    key = f"{name}/{severity}/{Path(relative_path).as_posix()}".encode()
    words = np.frombuffer(hashlib.sha256(key).digest(), dtype=np.uint32).tolist()
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def save_png(image: np.ndarray, path: Path) -> None:
    """Write a PNG so that a reader never sees half an image (``files.atomic_path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        Image.fromarray(image).save(partial, format="PNG")
