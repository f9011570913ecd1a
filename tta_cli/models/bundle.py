"""Model bundles: a folder holding a classifier, its preprocessing and its source statistics.

BUNDLE/model.toml               architecture, classes, input size, mean/std, feature layers
BUNDLE/weights.safetensors      the trained weights
BUNDLE/source_stats.safetensors per feature layer: mean and std of pooled clean-source features
BUNDLE/mgg.safetensors          optional: the pre-trained Meta Gradient Generator
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, Field, ValidationError, model_validator
from safetensors.torch import load_file
from torch import nn

from tta_cli.errors import UsageError
from tta_cli.files import tomllib
from tta_cli.models.architectures import build_architecture

MODEL_FILE = "model.toml"
WEIGHTS_FILE = "weights.safetensors"
SOURCE_STATS_FILE = "source_stats.safetensors"
MGG_FILE = "mgg.safetensors"


class ModelSpec(BaseModel):
    """The contents of ``model.toml``: everything needed to rebuild and feed the model."""

    name: str
    architecture: str
    class_names: list[str] = Field(min_length=2)
    input_size: tuple[int, int] = (32, 32)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_layers: list[str] = Field(min_length=1)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names has duplicates")
        if any(value <= 0 for value in self.std):
            raise ValueError("std must be positive")
        return self


@dataclass
class Bundle:
    """A loaded bundle: the model in eval mode on the CPU, its spec and source statistics."""

    path: Path
    spec: ModelSpec
    model: nn.Module
    source_stats: dict[str, tuple[torch.Tensor, torch.Tensor]]
    weights_sha256: str
    fisher: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    """EATA's Fisher diagonal and source value per adapted parameter, when measured on clean
    source images for this session (``tta_cli.objectives.measure_fisher``); not stored in the folder."""


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


def load_bundle(path: Path) -> Bundle:
    """Read and check a bundle; every missing or mismatched part is a one-sentence error."""
    path = Path(path)
    spec = read_spec(path)
    for required in (WEIGHTS_FILE, SOURCE_STATS_FILE):
        if not (path / required).is_file():
            raise UsageError(f"Model bundle {path} is missing {required}; re-create it with 'tta-cli prepare'.")
    model = build_architecture(spec.architecture, spec.num_classes)
    weights_file = path / WEIGHTS_FILE
    state = load_file(str(weights_file))
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise UsageError(_state_mismatch(weights_file, spec, error)) from error
    model.eval()
    stats = load_file(str(path / SOURCE_STATS_FILE))
    source_stats = {}
    for layer in spec.feature_layers:
        if f"{layer}.mean" not in stats or f"{layer}.std" not in stats:
            raise UsageError(f"{path / SOURCE_STATS_FILE} has no statistics for feature layer {layer!r}.")
        source_stats[layer] = (stats[f"{layer}.mean"], stats[f"{layer}.std"])
    return Bundle(path, spec, model, source_stats, file_sha256(weights_file))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _state_mismatch(weights_file: Path, spec: ModelSpec, error: RuntimeError) -> str:
    text = str(error)
    if "size mismatch" in text and spec.num_classes:
        return (
            f"{weights_file} does not fit architecture {spec.architecture!r} with {spec.num_classes} classes "
            "(a layer's shape differs: is the class count right?)."
        )
    return f"{weights_file} does not fit architecture {spec.architecture!r}: missing or unexpected parameters."
