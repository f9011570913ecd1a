"""Model bundles: a folder holding a classifier, its preprocessing and its source statistics.

BUNDLE/model.toml               architecture, classes, input framing, mean/std, feature layers
BUNDLE/weights.safetensors      the trained weights
BUNDLE/source_stats.safetensors per feature layer: mean and std of pooled clean-source features
BUNDLE/mgg.safetensors          optional: the pre-trained Meta Gradient Generator (``mgtta``)
BUNDLE/mgg-no-memory.safetensors optional: the generator without memory (``mgtta-nomem``)
BUNDLE/distill.json             optional: how a student was distilled (``tta-cli distill``)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, Field, ValidationError, model_validator
from torch import nn

from tta_cli.config import CropMode, Interpolation
from tta_cli.errors import UsageError
from tta_cli.files import file_sha256, tomllib
from tta_cli.models.architectures import build_architecture, code_file
from tta_cli.models.checkpoints import read_tensors
from tta_cli.models.layout import same_in_channels_last
from tta_cli.models.trust import trust
from tta_cli.models.typicality import Typicality
from tta_cli.streams.framing import Framing

MODEL_FILE = "model.toml"
WEIGHTS_FILE = "weights.safetensors"
SOURCE_STATS_FILE = "source_stats.safetensors"
MGG_FILE = "mgg.safetensors"
MGG_NO_MEMORY_FILE = "mgg-no-memory.safetensors"
"""The generator without memory (``train-mgg --no-memory``), which ``mgtta-nomem`` runs."""
DISTILL_FILE = "distill.json"
CHANNELS = (1, 3)
"""Grayscale or RGB: what images give."""
RECREATE = "re-create it with 'tta-cli prepare'"


class ModelSpec(BaseModel):
    """The contents of ``model.toml``: everything needed to rebuild and feed the model."""

    name: str
    architecture: str
    class_names: list[str] = Field(min_length=2)
    input_size: tuple[int, int] = (32, 32)
    """Height and width of the model's input."""
    crop_pct: float = 1.0
    crop_mode: CropMode = "squash"
    interpolation: Interpolation = "bilinear"
    """How an image is framed into ``input_size`` (``tta_cli.streams.Framing``); the defaults, a
    plain bilinear resize, are what bundles written before these fields meant."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """Per input channel, in [0, 1]: one value for a grayscale model, three for RGB."""
    feature_layers: list[str] = Field(min_length=1)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def framing(self) -> Framing:
        return Framing(self.input_size, self.crop_pct, self.crop_mode, self.interpolation)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names has duplicates")
        if (problem := normalisation_problem(self.mean, self.std)) is not None:
            raise ValueError(problem)
        _ = self.framing  # Framing refuses an input size or a crop_pct out of range
        return self


def normalisation_problem(mean: Sequence[float], std: Sequence[float]) -> str | None:
    """What is wrong with an input mean and std, if anything."""
    if len(mean) not in CHANNELS or len(std) != len(mean):
        return "mean and std must have one value each for a grayscale model or three for RGB"
    if not all(math.isfinite(value) for value in (*mean, *std)):
        return "mean and std must be finite numbers"
    if min(std) <= 0:
        return "std must be positive"
    return None


@dataclass
class Bundle:
    """A loaded bundle: the model in eval mode on the CPU, its spec and source statistics."""

    path: Path
    spec: ModelSpec
    model: nn.Module
    source_stats: dict[str, tuple[torch.Tensor, torch.Tensor]]
    weights_sha256: str
    typicality: Typicality | None = None
    """How typical of the source's images a batch looks to the shallow BatchNorm layers, where
    ``prepare`` measured it (``tta_cli.models.typicality``)."""
    fisher: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    """EATA's Fisher diagonal and source value per adapted parameter, when measured on clean
    source images for this session (``tta_cli.objectives.measure_fisher``); not stored in the folder."""
    channels_last: bool = False
    """Whether the model may run in channels-last layout on the CPU (``tta_cli.models.layout``)."""

    def on(self, device: torch.device) -> nn.Module:
        """The model, moved to ``device``: channels-last on the CPU where ``channels_last`` allows,
        as stored elsewhere (on a GPU the layout was not measured)."""
        layout = torch.channels_last if device.type == "cpu" and self.channels_last else torch.contiguous_format
        return self.model.to(device=device, memory_format=layout)  # type: ignore[call-overload]


def read_spec(path: Path) -> ModelSpec:
    spec_file = path / MODEL_FILE
    if not path.is_dir():
        raise UsageError(f"Model bundle {path} does not exist or is not a folder.")
    if not spec_file.is_file():
        raise UsageError(f"Model bundle {path} has no {MODEL_FILE}; make one with 'tta-cli prepare'.")
    try:
        return ModelSpec.model_validate(tomllib.loads(spec_file.read_text()))
    except (tomllib.TOMLDecodeError, ValidationError) as error:
        first = str(error).splitlines()
        raise UsageError(f"{spec_file} is not a valid model description: {' '.join(first[:3])}.") from error


def trust_bundle(path: Path) -> tuple[Path, str] | None:
    """Trust the Python file a bundle's ``model.toml`` runs to build its model, as it is now
    (``tta_cli.models.trust``): the file and its SHA-256; ``None`` if it names no file."""
    file = code_file(read_spec(path).architecture)
    if file is None:
        return None
    file = Path(path) / file
    if not file.is_file():
        raise UsageError(f"Bundle {path} names {file}, which does not exist.")
    return file.resolve(), trust(file)


def load_bundle(path: Path) -> Bundle:
    """Read and check a bundle; every missing or mismatched part is a one-sentence error."""
    path = Path(path)
    spec = read_spec(path)
    for required in (WEIGHTS_FILE, SOURCE_STATS_FILE):
        if not (path / required).is_file():
            raise UsageError(f"Model bundle {path} is missing {required}; {RECREATE}.")
    model = build_architecture(spec.architecture, spec.num_classes, bundle=path)
    weights_file = path / WEIGHTS_FILE
    state = read_tensors(weights_file, RECREATE)
    refuse_non_finite(state, weights_file)
    load_weights(model, state, weights_file, spec.architecture)
    model.eval()
    check_input(model, spec.channels, spec.input_size, f"The model of bundle {path}")
    stats = read_tensors(path / SOURCE_STATS_FILE, RECREATE)
    refuse_non_finite(stats, path / SOURCE_STATS_FILE)
    source_stats = {}
    for layer in spec.feature_layers:
        if f"{layer}.mean" not in stats or f"{layer}.std" not in stats:
            raise UsageError(f"{path / SOURCE_STATS_FILE} has no statistics for feature layer {layer!r}.")
        source_stats[layer] = (stats[f"{layer}.mean"], stats[f"{layer}.std"])
    typicality = Typicality.from_tensors(stats)
    channels_last = same_in_channels_last(model, spec.channels, spec.input_size)
    return Bundle(path, spec, model, source_stats, file_sha256(weights_file), typicality, channels_last=channels_last)


def refuse_non_finite(tensors: Mapping[str, torch.Tensor], source: Path) -> None:
    """A NaN or infinity in weights or statistics makes every prediction meaningless."""
    if (name := first_non_finite(tensors)) is not None:
        raise UsageError(f"{source} holds non-finite values in {name!r}; the model cannot be used.")


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, if any."""
    return next(
        (name for name, tensor in tensors.items() if tensor.is_floating_point() and not bool(tensor.isfinite().all())),
        None,
    )


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: Path, architecture: str) -> None:
    """Load ``state`` into ``model``, saying in one sentence which tensor does not fit."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        example = (missing or unexpected)[0]
        kind = "lacks" if missing else "has an unexpected"
        raise UsageError(
            f"{source} does not fit architecture {architecture!r}: it {kind} tensor {example!r} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)."
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise UsageError(
                f"{source} does not fit architecture {architecture!r}: {name!r} is {tuple(tensor.shape)}, the "
                f"architecture's is {tuple(expected[name].shape)} (is the class count right?)."
            )
    model.load_state_dict(state)


def check_input(model: nn.Module, channels: int, size: tuple[int, int], what: str) -> None:
    """Run ``model`` (in eval mode) once on a blank input of the declared shape, so that a model
    that cannot take it fails here with one sentence rather than on the first real batch."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, *size))
    except (RuntimeError, ValueError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"{what} fails on a {channels}×{size[0]}×{size[1]} input ({detail}); give one mean and std value per "
            "input channel (one for grayscale) and the input size it was trained at."
        ) from error
