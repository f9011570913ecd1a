"""Group frames into normalised tensors the model can take."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tta_cli.streams.frames import Frame

UNLABELED = -1


@dataclass
class Batch:
    """``images`` is ``N×3×H×W`` float, normalised; ``labels`` holds ``UNLABELED`` where unknown;
    ``end_position`` is the stream position just after the batch's last frame."""

    ids: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    end_position: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labeled(self) -> torch.Tensor:
        return self.labels != UNLABELED


class Preprocess:
    """uint8 RGB → float tensor normalised with the bundle's own mean and std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(images).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return (pixels - self.mean) / self.std


def batches(frames: Iterable[Frame], batch_size: int, preprocess: Preprocess) -> Generator[Batch, None, None]:
    """Consecutive frames in groups of ``batch_size`` (the last group may be smaller)."""
    group: list[Frame] = []
    for frame in frames:
        group.append(frame)
        if len(group) == batch_size:
            yield _collate(group, preprocess)
            group = []
    if group:
        yield _collate(group, preprocess)


def _collate(frames: list[Frame], preprocess: Preprocess) -> Batch:
    images = preprocess(np.stack([frame.image for frame in frames]))
    labels = torch.tensor([UNLABELED if frame.label is None else frame.label for frame in frames])
    return Batch([frame.id for frame in frames], images, labels.to(preprocess.device), frames[-1].position + 1)
