"""The images a Meta Gradient Generator is pre-trained on: clean *training* images of the bundle's
classes, corrupted with held-out shifts only (MGTTA, arXiv 2412.16901, Sec. 4.1: 128 images of
the four held-out ImageNet-C corruptions, never the 15 evaluation ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tta_cli.corruptions import CORRUPTIONS, check_corruption, corrupt, image_rng
from tta_cli.errors import UsageError
from tta_cli.streams import FolderStream, Framing
from tta_cli.streams.decode import UnreadableImage, decode_image
from tta_cli.streams.ordering import seeded_shuffle


@dataclass
class ShiftedImages:
    """uint8 ``N×H×W×3`` images with their class indices and the shift applied to each, and the
    same images without it (``clean``)."""

    images: np.ndarray
    labels: torch.Tensor
    shifts: list[str]
    clean: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> ShiftedImages:
        chosen = list(indices)
        return ShiftedImages(
            self.images[chosen], self.labels[chosen], [self.shifts[index] for index in chosen], self.clean[chosen]
        )


@dataclass
class HeldOutData:
    """``train``: the small set the generator learns on, one held-out shift per image in turn.
    ``evaluation``: other images under every held-out shift, for checkpoint selection."""

    train: ShiftedImages
    evaluation: dict[str, ShiftedImages]


def check_held_out(held_out: Sequence[str], severity: int) -> None:
    """Refuse an evaluation corruption (pre-training on it would leak the benchmark) or an unknown one."""
    if not held_out:
        raise UsageError("Give at least one held-out corruption to pre-train on.")
    leaked = [name for name in held_out if name in CORRUPTIONS]
    if leaked:
        raise UsageError(
            f"{leaked[0]} is one of the 15 evaluation corruptions; pre-train on held-out shifts only "
            "(speckle_noise, spatter, gaussian_blur, saturate)."
        )
    for name in held_out:
        try:
            check_corruption(name, severity)
        except ValueError as error:
            raise UsageError(str(error)) from error


def build_held_out(
    data_folder: Path,
    class_names: Sequence[str],
    framing: Framing,
    held_out: Sequence[str],
    severity: int,
    num_images: int,
    eval_images: int,
    seed: int,
) -> HeldOutData:
    """Pick ``num_images + eval_images`` labeled images of ``data_folder`` (shuffled with ``seed``)
    and corrupt them reproducibly: the first ``num_images`` cycle through the shifts; every one
    of the next ``eval_images`` appears once under each shift."""
    check_held_out(held_out, severity)
    stream = FolderStream(Path(data_folder), framing, class_names)
    labeled = seeded_shuffle(
        [(path, label) for path, label in zip(stream.files, stream.labels, strict=True) if label is not None], seed
    )
    if len(labeled) < num_images + eval_images:
        raise UsageError(
            f"{data_folder} has {len(labeled)} images in class folders named like the bundle's classes; "
            f"pre-training needs {num_images + eval_images} (--num-images plus the evaluation images)."
        )
    chosen = labeled[: num_images + eval_images]
    clean = np.stack([_decode(path, framing) for path, _ in chosen])
    labels = torch.tensor([label for _, label in chosen])
    relative = [path.relative_to(stream.root) for path, _ in chosen]

    def shifted(indices: range, shifts: list[str]) -> ShiftedImages:
        images = np.stack(
            [
                corrupt(clean[index], shift, severity, image_rng(seed, shift, severity, relative[index]))
                for index, shift in zip(indices, shifts, strict=True)
            ]
        )
        return ShiftedImages(images, labels[list(indices)], shifts, clean[list(indices)])

    train_range = range(num_images)
    train = shifted(train_range, [held_out[index % len(held_out)] for index in train_range])
    eval_range = range(num_images, num_images + eval_images)
    evaluation = {shift: shifted(eval_range, [shift] * eval_images) for shift in held_out}
    return HeldOutData(train, evaluation)


def _decode(path: Path, framing: Framing) -> np.ndarray:
    try:
        return decode_image(path, framing)
    except UnreadableImage as error:
        raise UsageError(f"{path} cannot be read as an image ({error}); remove it from the training folder.") from error
