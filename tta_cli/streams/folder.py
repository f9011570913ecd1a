"""A folder (or one file) of images, read in sorted order with decoding in worker threads.

Class sub-folders whose names match the bundle's class names give labels, so a labeled
folder reports online accuracy; anything else is unlabeled.
"""

from __future__ import annotations

import logging
import os
import random
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tta_cli.errors import UsageError
from tta_cli.streams.decode import IMAGE_SUFFIXES, UnreadableImage, decode_image
from tta_cli.streams.frames import Frame, SkipLog

log = logging.getLogger(__name__)


class FolderStream:
    """Images under ``root`` (recursive, sorted by path), optionally shuffled with a seed;
    iteration begins at position ``start`` of that order."""

    def __init__(
        self,
        root: Path,
        input_size: tuple[int, int],
        class_names: Sequence[str] = (),
        order: str = "sorted",
        seed: int = 0,
        workers: int | None = None,
        limit: int | None = None,
        start: int = 0,
    ) -> None:
        root = Path(root)
        if not root.exists():
            raise UsageError(f"Source {root} does not exist.")
        self.root = root
        self.input_size = input_size
        self.files = list_images(root)
        if not self.files:
            raise UsageError(f"Source {root} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        if order == "shuffled":
            random.Random(seed).shuffle(self.files)
        elif order != "sorted":
            raise UsageError(f"Unknown order {order!r}; use 'sorted' or 'shuffled'.")
        if limit is not None:
            self.files = self.files[:limit]
        self.start = start
        self.class_index = {name: index for index, name in enumerate(class_names)}
        self.workers = workers or min(8, (os.cpu_count() or 1) + 2)
        self.skipped = SkipLog()

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labeled(self) -> bool:
        return any(self.label_of(path) is not None for path in self.files[:1000])

    def label_of(self, path: Path) -> int | None:
        """The class of the nearest enclosing folder that names a class, if any."""
        for folder in reversed(path.relative_to(self.root).parts[:-1]):
            if folder in self.class_index:
                return self.class_index[folder]
        return None

    def __iter__(self) -> Iterator[Frame]:
        # A bounded window of decodes in flight keeps the model fed without holding the
        # whole folder in memory; results come back in order.
        window = 4 * self.workers
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            pending: deque[tuple[int, Path, Future[np.ndarray]]] = deque()
            files = enumerate(self.files[self.start :], start=self.start)
            for position, path in files:
                pending.append((position, path, pool.submit(decode_image, path, self.input_size)))
                if len(pending) >= window:
                    break
            while pending:
                position, path, future = pending.popleft()
                upcoming = next(files, None)
                if upcoming is not None:
                    pending.append((*upcoming, pool.submit(decode_image, upcoming[1], self.input_size)))
                frame_id = self._id(path)
                try:
                    image = future.result()
                except UnreadableImage as error:
                    self.skipped.add(position, frame_id, str(error))
                    log.warning("skipped %s: %s", frame_id, error)
                    continue
                yield Frame(frame_id, image, self.label_of(path), position)

    def _id(self, path: Path) -> str:
        return path.name if self.root.is_file() else path.relative_to(self.root).as_posix()


def list_images(root: Path) -> list[Path]:
    """Every file with an image suffix under ``root`` (or ``root`` itself), sorted by path."""
    if root.is_file():
        return [root]
    return sorted(path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
