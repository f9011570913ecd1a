"""Group frames into normalised tensors the model can take."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from tta_cli.errors import UsageError
from tta_cli.streams.decode import to_rgb_array
from tta_cli.streams.frames import Frame
from tta_cli.streams.framing import Framing

UNLABELED = -1


@dataclass
class Batch:
    """``images`` is ``N×3×H×W`` float, normalised; ``labels`` holds ``UNLABELED`` where unknown;
    ``end_position`` is the stream position just after the batch's last frame."""

    ids: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    end_position: int = 0
    weights: torch.Tensor | None = None
    """Each input's weight in the objectives (mean 1), where a weighting across domains set it."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labeled(self) -> torch.Tensor:
        return self.labels != UNLABELED


LUMA = (0.299, 0.587, 0.114)
"""ITU-R 601 luma weights of R, G and B: how PIL converts RGB to grayscale ("L")."""


class Preprocess:
    """uint8 RGB → float tensor in the model's channels (one value of ``mean`` per channel: RGB,
    or grayscale by ``LUMA``), normalised with the bundle's own mean and std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.channels = len(mean)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255
        self.luma = torch.tensor(LUMA, device=self.device).view(1, 3, 1, 1)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(images).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return self._normalise(pixels)

    def tensor(self, images: torch.Tensor) -> torch.Tensor:
        """``N×C×H×W`` (C = 3 or the model's channels) as torchvision's ``ToTensor`` gives it
        (float in [0, 1]) or uint8."""
        pixels = images.to(self.device, non_blocking=True).float()
        return self._normalise(pixels if not images.is_floating_point() else pixels * 255)

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.channels == 1 and pixels.shape[1] == 3:
            pixels = (pixels * self.luma).sum(dim=1, keepdim=True)
        # Contiguous NCHW: arrays arrive channels-last, and torch 2.13's CPU GroupNorm backward
        # crashes the process (a segmentation fault) on channels-last input.
        return ((pixels - self.mean) / self.std).contiguous()


Images = torch.Tensor | np.ndarray | Sequence[Image.Image | np.ndarray]
"""What a caller's own loop may hand over: an ``N×3×H×W`` tensor (float in [0, 1] or uint8), an
``N×H×W×3`` array (uint8, or float in [0, 1]), or PIL images or ``H×W×3`` / ``H×W`` uint8 arrays of any size."""


def batch_of(
    images: Images,
    framing: Framing,
    preprocess: Preprocess,
    ids: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    start: int = 0,
    num_classes: int | None = None,
) -> Batch:
    """A batch from images a caller already holds (``Images``); tensors and arrays must be
    framed already (at ``framing.size``), PIL images and single arrays are converted and framed
    as image files are. ``start`` is the stream position of the first image; ``labels`` are
    class indices below ``num_classes`` (when given) or ``UNLABELED``."""
    if len(images) == 0:
        # An empty batch has no predictions to judge: the guard would take it for a collapse.
        raise UsageError("A batch needs at least one image; none were given.")
    size = framing.size
    if isinstance(images, torch.Tensor):
        channels = {3, preprocess.channels}
        if images.dim() != 4 or images.shape[1] not in channels or tuple(images.shape[2:]) != size:
            shape = f"N×{'/'.join(map(str, sorted(channels)))}×{size[0]}×{size[1]}"
            raise UsageError(f"Expected images of shape {shape}, got {tuple(images.shape)}.")
        check_pixel_values(images, images.is_floating_point())
        pixels = preprocess.tensor(images)
    elif isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[3] != 3 or tuple(images.shape[1:3]) != size:
            raise UsageError(f"Expected an array of shape N×{size[0]}×{size[1]}×3, got {images.shape}.")
        floating = np.issubdtype(images.dtype, np.floating)
        check_pixel_values(images, floating)
        if floating:
            pixels = preprocess.tensor(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
        else:
            pixels = preprocess(np.ascontiguousarray(images, dtype=np.uint8))
    else:
        pixels = preprocess(np.stack([to_rgb_array(image, framing) for image in images]))
    count = len(pixels)
    ids = list(ids) if ids is not None else [str(start + index) for index in range(count)]
    label_values = [UNLABELED] * count if labels is None else list(labels)
    if len(ids) != count or len(label_values) != count:
        raise UsageError(f"{count} images came with {len(ids)} ids and {len(label_values)} labels.")
    wrong = [
        label
        for label in label_values
        if label != UNLABELED and not (label >= 0 and (num_classes is None or label < num_classes))
    ]
    if wrong:
        indices = "0 or more" if num_classes is None else f"0 to {num_classes - 1}"
        raise UsageError(
            f"Label {wrong[0]} is not a class index ({indices}) nor {UNLABELED}, which marks an unlabeled image."
        )
    return Batch(ids, pixels, torch.tensor(label_values, device=preprocess.device), start + count)


def check_pixel_values(images: torch.Tensor | np.ndarray, floating: bool) -> None:
    """Refuse pixel values outside what their type means: [0, 1] for floats, [0, 255] for
    integers (a float image in [0, 255], cast or scaled, would be noise to the model)."""
    top = 1.0 if floating else 255.0
    low, high = float(images.min()), float(images.max())
    if not 0 <= low <= high <= top:  # NaN fails every comparison
        kind = "float" if floating else "integer"
        raise UsageError(f"Pixel values of {kind} images lie in [0, {top:g}]; these lie in [{low:g}, {high:g}].")


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
