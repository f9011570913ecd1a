"""Target streams for the benchmark: a labeled clean folder under each corruption, cached on disk.

The clean folder (``<class>/<image>``; for CIFAR-10 the test split) gives the images. A seeded
shuffle fixes the stream order and, with ``num_examples``, which images are used: the same
images, in the same order, under every corruption, as in the published CIFAR-10-C files. Each
image is corrupted with its own generator (``tta_cli.corruptions.image_rng``), with CIFAR-10-C's
parameters for 32×32 images and ImageNet-C's otherwise, and stored as PNG under

    CACHE/<hash of data, selection and seed>/<corruption>-<severity>/<class>/<stem>.png

at the clean image's own size: a stream is framed as the model's input (``Framing``) when it is
loaded, so the cache serves every model and framing, and its key does not name them.

A folder counts as built once its ``complete.json`` exists (written last, after an atomic
rename of the whole folder) and records the same corruption parameters as the code now has;
otherwise it is rebuilt. ``ShiftedStream.reordered`` plays a stream in another order (``orders``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tta_cli.bench.orders import order_indices, order_rng, parse_order, video_frames
from tta_cli.corruptions import (
    BEYOND,
    CIFAR_PARAMETERS,
    IMAGENET_PARAMETERS,
    beyond,
    check_corruption,
    corrupt,
    image_rng,
)
from tta_cli.corruptions.folder import save_png
from tta_cli.errors import UsageError
from tta_cli.files import atomic_folder
from tta_cli.streams.decode import decode_image, open_upright
from tta_cli.streams.folder import labeled_images
from tta_cli.streams.framing import Framing
from tta_cli.streams.ordering import seeded_shuffle

COMPLETE = "complete.json"
CACHE_VERSION = 2
"""Part of every cache key: 2 since images that differ only in suffix are cached apart."""


@dataclass
class ShiftedStream:
    """One corruption's images in stream order, decoded and framed as the model's input."""

    corruption: str
    severity: int
    folder: Path
    ids: list[str]
    images: np.ndarray  # N×H×W×3 uint8
    labels: np.ndarray  # N, int64
    domains: list[str] | None = None
    """Each image's corruption, in a stream that mixes several (``protocols.mix``)."""

    def __len__(self) -> int:
        return len(self.ids)

    def reordered(self, order: str, seed: int) -> ShiftedStream:
        """A copy in ``order`` (``orders``), drawn from a generator of the seed and this corruption.

        A video frame's id is its image's id with ``#`` and the frame's number (from 1).
        """
        rng = order_rng(seed, self.corruption)
        indices = order_indices(self.labels, order, rng)
        ids = [self.ids[index] for index in indices]
        images = self.images[indices]
        parsed = parse_order(order)
        if parsed.kind == "video":
            ids = [f"{image_id}#{position % parsed.frames + 1}" for position, image_id in enumerate(ids)]
            images = video_frames(images, rng)
        return replace(self, ids=ids, images=images, labels=self.labels[indices])


def default_cache_dir() -> Path:
    """``$TTA_CLI_CACHE`` if set, else ``$XDG_CACHE_HOME/tta-cli`` (``~/.cache/tta-cli``), plus ``bench``."""
    if os.environ.get("TTA_CLI_CACHE"):
        return Path(os.environ["TTA_CLI_CACHE"]) / "bench"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tta-cli" / "bench"


def select_images(data: Path, class_names: Sequence[str], num_examples: int | None, seed: int) -> list[Path]:
    """The clean images used, relative to ``data``, in stream order."""
    data = Path(data)
    if not data.is_dir():
        raise UsageError(f"Clean data folder {data} does not exist.")
    folders = sorted(path for path in data.iterdir() if path.is_dir())
    unknown = [folder.name for folder in folders if folder.name not in class_names]
    if not folders or unknown:
        raise UsageError(
            f"{data} must hold one sub-folder per class of the model ({', '.join(class_names)}); "
            f"found {', '.join(unknown[:3]) or 'none'}."
        )
    files = [path.relative_to(data) for path, _ in labeled_images(data, class_names, "*/*")]
    if not files:
        raise UsageError(f"{data} holds no images under its class folders.")
    files = seeded_shuffle(files, seed)
    return files[:num_examples] if num_examples else files


def stream_key(data: Path, files: Sequence[Path], seed: int) -> str:
    """Names the clean images (path, size and time of each) and the seed."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{Path(data).resolve()}|{seed}".encode())
    for relative in files:
        stat = (Path(data) / relative).stat()
        digest.update(f"|{relative.as_posix()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def build_streams(
    data: Path,
    class_names: Sequence[str],
    corruptions: Sequence[str],
    severity: int,
    framing: Framing,
    num_examples: int | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    on_image: Callable[[str], None] | None = None,
) -> list[ShiftedStream]:
    """One stream per corruption, built on first use and read from the cache afterwards.

    ``on_image(corruption)`` is called after each image corrupted (not for cached ones).
    """
    for name in corruptions:
        try:
            check_corruption(name, severity)
        except ValueError as error:
            raise UsageError(str(error)) from error
    files = select_images(data, class_names, num_examples, seed)
    root = Path(cache_dir or default_cache_dir()) / stream_key(data, files, seed)
    streams = []
    for name in corruptions:
        folder = root / f"{name}-{severity}"
        if not _is_complete(folder, name, severity):
            _build(Path(data), files, name, severity, seed, folder, on_image)
        streams.append(_load(folder, name, severity, class_names, framing))
    return streams


def _parameters(name: str, severity: int) -> dict[str, list[float]]:
    if name in BEYOND:
        return {"beyond": beyond.PARAMETERS[name]}
    return {
        "cifar": list(CIFAR_PARAMETERS[name][severity - 1]),
        "imagenet": list(IMAGENET_PARAMETERS[name][severity - 1]),
    }


def _is_complete(folder: Path, name: str, severity: int) -> bool:
    """Whether ``folder`` holds a finished build of the stream with today's parameters (a
    damaged marker is an unfinished build, built again)."""
    try:
        marker = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("parameters") == _parameters(name, severity)


def _build(
    data: Path,
    files: Sequence[Path],
    name: str,
    severity: int,
    seed: int,
    folder: Path,
    on_image: Callable[[str], None] | None,
) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_folder(folder) as staging:
            _corrupt_into(staging, data, files, name, severity, seed, on_image)
            if _is_complete(folder, name, severity):
                raise _BuiltElsewhere
            shutil.rmtree(folder, ignore_errors=True)  # a stale or unfinished build of this stream
    except (_BuiltElsewhere, OSError):
        # Another process sharing the cache finished the same stream first: its build is kept
        # (only one that lands between the check above and the removal of a stale build is lost).
        if not _is_complete(folder, name, severity):
            raise


class _BuiltElsewhere(Exception):
    """The stream being built appeared in the cache meanwhile."""


def _corrupt_into(
    staging: Path,
    data: Path,
    files: Sequence[Path],
    name: str,
    severity: int,
    seed: int,
    on_image: Callable[[str], None] | None,
) -> None:
    stems = Counter(relative.with_suffix("") for relative in files)
    order = []
    for relative in files:
        pixels = np.asarray(open_upright(data / relative).convert("RGB"))
        corrupted = corrupt(pixels, name, severity, image_rng(seed, name, severity, relative))
        # a.jpg → a.png, unless an a.png (or a.bmp) sits beside it: then a.jpg.png.
        target = relative.with_suffix(".png") if stems[relative.with_suffix("")] == 1 else Path(f"{relative}.png")
        save_png(corrupted, staging / target)
        order.append(target.as_posix())
        if on_image is not None:
            on_image(name)
    marker = {"corruption": name, "severity": severity, "seed": seed, "parameters": _parameters(name, severity)}
    (staging / COMPLETE).write_text(json.dumps({**marker, "order": order}))


def _load(folder: Path, name: str, severity: int, class_names: Sequence[str], framing: Framing) -> ShiftedStream:
    order = json.loads((folder / COMPLETE).read_text())["order"]
    class_index = {class_name: index for index, class_name in enumerate(class_names)}
    images = np.stack([decode_image(folder / relative, framing) for relative in order])
    labels = np.array([class_index[Path(relative).parts[0]] for relative in order], dtype=np.int64)
    return ShiftedStream(name, severity, folder, list(order), images, labels)
