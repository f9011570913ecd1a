"""The images a distillation learns from, decoded once and held in memory, and the order in
which every epoch visits them.

Source images come from a labeled folder (``<class>/<image>``, classes named as the teacher's
bundle). Target images are those the adapted run read (its folder, glob or video file, in its
order, up to where it stopped), or another source given by the user; class folders among them
give labels for measuring accuracy, never for learning. Unreadable files are skipped and
counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tta_cli.bench.streams import select_images
from tta_cli.config import AdaptConfig
from tta_cli.engine import open_run_source
from tta_cli.engine.session import PYTHON_SOURCE
from tta_cli.errors import UsageError
from tta_cli.models import ModelSpec
from tta_cli.streams import UNLABELED, Stream, open_source


@dataclass
class ImageSet:
    """``images``: N×H×W×3 uint8 RGB framed as the model's input; ``labels``: class indices,
    ``UNLABELED`` where unknown; ``skipped``: files that could not be read."""

    where: str
    images: np.ndarray
    labels: np.ndarray
    skipped: int

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labeled(self) -> int:
        return int((self.labels != UNLABELED).sum())


def read_stream(stream: Stream, where: str, stop: int | None = None) -> ImageSet:
    """Every readable frame of ``stream`` before position ``stop`` (all when ``None``)."""
    images, labels = [], []
    try:
        for frame in stream:
            if stop is not None and frame.position >= stop:
                break
            images.append(frame.image)
            labels.append(UNLABELED if frame.label is None else frame.label)
    finally:
        stream.close()
    if not images:
        raise UsageError(f"{where} holds no readable images.")
    return ImageSet(where, np.stack(images), np.array(labels, dtype=np.int64), stream.skipped.total)


def source_images(folder: Path, spec: ModelSpec) -> ImageSet:
    """The labeled source images: one sub-folder per class, named as the bundle's classes."""
    select_images(folder, spec.class_names, None, 0)  # refuses other folders, in one sentence
    images = read_stream(open_source(folder, spec.framing, spec.class_names), f"Source data {folder}")
    keep = images.labels != UNLABELED
    return ImageSet(images.where, images.images[keep], images.labels[keep], images.skipped)


def target_images(text: str | None, spec: ModelSpec, run: AdaptConfig, position: int) -> ImageSet:
    """The images of ``text`` (a folder, glob or video file), or when ``None`` those the run read:
    its source, in its order, up to its last step's stream ``position``."""
    if text is not None:
        return read_stream(_finite(open_source(text, spec.framing, spec.class_names), text), f"Target data {text}")
    if run.source == PYTHON_SOURCE:
        raise UsageError(
            "The run was fed batches from Python, not read from files; give the target images with --target-data."
        )
    try:
        stream = open_run_source(run, spec)
    except UsageError as error:
        raise UsageError(f"{error} Give the target images with --target-data.") from error
    return read_stream(_finite(stream, run.source), f"The run's source {run.source}", position or None)


def _finite(stream: Stream, text: str) -> Stream:
    if stream.length is None:
        stream.close()
        raise UsageError(
            f"{text} is a live source, whose images cannot be read again; give target images with --target-data."
        )
    return stream


def epoch_order(count: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``length`` indices into ``count`` items: random permutations one after another, so that
    every item comes once before any comes twice."""
    rounds = -(-length // count)
    return torch.cat([torch.randperm(count, generator=generator) for _ in range(rounds)])[:length]
