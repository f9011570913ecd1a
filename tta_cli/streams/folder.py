"""A folder, a glob or one image file, read in sorted order with decoding in worker threads.

Class sub-folders whose names match the bundle's class names give labels, so a labeled
folder reports online accuracy; anything else is unlabeled.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tta_cli.errors import UsageError
from tta_cli.events import Event, EventKind
from tta_cli.streams.decode import IMAGE_SUFFIXES, UnreadableImage, decode_image
from tta_cli.streams.frames import Frame, Stream
from tta_cli.streams.framing import Framing
from tta_cli.streams.ordering import seeded_shuffle

log = logging.getLogger(__name__)


class FolderStream(Stream):
    """Images under ``root`` (recursive, sorted by path) or matching a glob such as
    ``shots/*/*.jpg``, optionally shuffled with a seed, every ``stride``-th one kept, cut
    after ``limit``, each decoded as ``framing`` says; iteration begins at position ``start``
    of that order and ends early after ``duration`` seconds."""

    def __init__(
        self,
        root: Path | str,
        framing: Framing,
        class_names: Sequence[str] = (),
        order: str = "sorted",
        seed: int = 0,
        workers: int | None = None,
        limit: int | None = None,
        start: int = 0,
        stride: int = 1,
        duration: float | None = None,
    ) -> None:
        super().__init__(start)
        if is_glob(str(root)) and not Path(root).exists():
            self.root, pattern = glob_root(str(root))
            images = labeled_images(self.root, class_names, pattern)
        else:
            self.root = Path(root)
            if not self.root.exists():
                raise UsageError(f"Source {root} does not exist.")
            images = labeled_images(self.root, class_names)
            for folder, reason in folders_not_listed(self.root):
                log.warning("could not list %s (%s); its images are left out", folder, reason)
                self.events.add(Event(EventKind.FOLDER_NOT_LISTED, f"{folder}: {reason}"))
        if not images:
            raise UsageError(f"Source {root} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        self.framing = framing
        if order == "shuffled":
            images = seeded_shuffle(images, seed)
        elif order != "sorted":
            raise UsageError(f"Unknown order {order!r}; use 'sorted' or 'shuffled'.")
        images = images[::stride][:limit]
        self.files = [path for path, _ in images]
        self.labels = [label for _, label in images]
        self.duration = duration
        self.workers = workers or min(8, (os.cpu_count() or 1) + 2)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def length(self) -> int | None:
        return len(self.files)

    @property
    def replayable(self) -> bool:
        return True

    def __iter__(self) -> Iterator[Frame]:
        # A bounded window of decodes in flight keeps the model fed without holding the
        # whole folder in memory; results come back in order.
        window = 4 * self.workers
        deadline = None if self.duration is None else time.monotonic() + self.duration
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            pending: deque[tuple[int, Path, Future[np.ndarray]]] = deque()
            files = enumerate(self.files[self.start :], start=self.start)
            for position, path in files:
                pending.append((position, path, pool.submit(decode_image, path, self.framing)))
                if len(pending) >= window:
                    break
            while pending and not self.stopping:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                position, path, future = pending.popleft()
                upcoming = next(files, None)
                if upcoming is not None:
                    pending.append((*upcoming, pool.submit(decode_image, upcoming[1], self.framing)))
                frame_id = self._id(path)
                try:
                    image = future.result()
                except UnreadableImage as error:
                    self.skipped.add(position, frame_id, str(error))
                    log.warning("skipped %s: %s", frame_id, error)
                    continue
                yield Frame(frame_id, image, self.labels[position], position)

            for _, _, future in pending:
                future.cancel()

    def _id(self, path: Path) -> str:
        return path.name if self.root.is_file() else path.relative_to(self.root).as_posix()


def is_glob(text: str) -> bool:
    return any(character in text for character in "*?[")


def glob_root(pattern: str) -> tuple[Path, str]:
    """Split ``data/*/frame-??.png`` into the folder before the first wildcard and the rest."""
    parts = Path(pattern).parts
    fixed = next(index for index, part in enumerate(parts) if is_glob(part))
    return Path(*parts[:fixed]) if fixed else Path("."), str(Path(*parts[fixed:]))


def list_images(root: Path, pattern: str = "**/*") -> list[Path]:
    """The files with an image suffix under ``root`` whose path matches ``pattern``
    (``Path.glob``; the default takes every depth), sorted by path; ``root`` itself if it is a file."""
    if root.is_file():
        return [root]
    return sorted(path for path in root.glob(pattern) if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def folders_not_listed(root: Path) -> list[tuple[Path, str]]:
    """The folders under ``root`` that could not be listed (no permission), each with why:
    ``Path.glob`` passes over them without a word, so a folder source names them (a glob source
    does not: which of them its pattern would reach is not known)."""
    found: list[tuple[Path, str]] = []
    if root.is_dir():
        for _ in os.walk(
            root, onerror=lambda error: found.append((Path(error.filename), error.strerror or str(error)))
        ):
            pass
    return found


def labeled_images(root: Path, class_names: Sequence[str], pattern: str = "**/*") -> list[tuple[Path, int | None]]:
    """The images of ``list_images(root, pattern)``, each with the index in ``class_names`` of
    the nearest folder below ``root`` that encloses it and is named like a class (``None`` where
    none is). A labeled data set, ``root/<class>/<image>``, is the pattern ``*/*``."""
    class_index = {name: index for index, name in enumerate(class_names)}
    return [(path, _nearest_class(path.relative_to(root), class_index)) for path in list_images(root, pattern)]


def _nearest_class(relative: Path, class_index: dict[str, int]) -> int | None:
    for folder in reversed(relative.parts[:-1]):
        if folder in class_index:
            return class_index[folder]
    return None
