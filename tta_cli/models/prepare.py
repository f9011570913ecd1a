"""``tta-cli prepare``: make a bundle from an architecture, weights and clean source images."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w
import torch
from safetensors.torch import save
from torch import nn

from tta_cli.config import CropMode, Interpolation
from tta_cli.errors import UsageError
from tta_cli.files import atomic_folder
from tta_cli.models.architectures import absolute_reference, build_architecture, code_file
from tta_cli.models.bundle import (
    CHANNELS,
    MODEL_FILE,
    SOURCE_STATS_FILE,
    WEIGHTS_FILE,
    ModelSpec,
    check_input,
    first_non_finite,
    load_weights,
    normalisation_problem,
    refuse_non_finite,
)
from tta_cli.models.checkpoints import load_state_dict
from tta_cli.models.features import default_feature_layers, record_features
from tta_cli.models.pretrained import pretrained_preprocessing
from tta_cli.models.trust import trust
from tta_cli.models.typicality import measure_typicality
from tta_cli.streams import Batch, FolderStream, Framing, Preprocess, batches

FRAMING_DEFAULTS = {
    key: ModelSpec.model_fields[key].default for key in ("input_size", "crop_pct", "crop_mode", "interpolation")
}


def prepare_bundle(
    architecture: str,
    weights: Path,
    source_data: Path,
    out: Path,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    class_names: Sequence[str] = (),
    input_size: tuple[int, int] | None = None,
    crop_pct: float | None = None,
    crop_mode: CropMode | None = None,
    interpolation: Interpolation | None = None,
    feature_layers: Sequence[str] = (),
    num_images: int = 2000,
    batch_size: int = 100,
    trust_pickle: bool = False,
    name: str | None = None,
) -> ModelSpec:
    """Write ``out/`` (a new or empty folder) with model.toml, weights.safetensors and
    source_stats.safetensors.

    Class names default to the sub-folders of ``source_data``. ``mean`` and ``std`` have one
    value per input channel: one for a grayscale model, three for RGB. The preprocessing
    (``mean``, ``std``, ``input_size`` and the framing: ``crop_pct``, ``crop_mode``,
    ``interpolation``) defaults to what the pretrained config of a ``timm:NAME`` or
    ``torchvision:NAME`` architecture says (``tta_cli.models.pretrained``), else to a plain
    bilinear resize to 32×32; ``mean`` and ``std`` of any other architecture must be given. The
    source statistics are the mean and standard deviation of each feature layer's pooled output
    over up to ``num_images`` clean images (spread over the whole folder), framed as the bundle
    says, with the model in eval mode, and how typical of them an image looks to the shallow
    BatchNorm layers (``tta_cli.models.typicality``).
    """
    source_data, out = Path(source_data), Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UsageError(f"{out} already exists; a bundle is written into a new or empty folder, never over one.")
    if not source_data.is_dir():
        raise UsageError(f"Source data {source_data} is not a folder of clean images.")
    if not class_names:
        class_names = sorted(child.name for child in source_data.iterdir() if child.is_dir())
    if len(class_names) < 2:
        raise UsageError(f"Give --classes, or class sub-folders in {source_data}; found {len(class_names)} classes.")
    architecture = absolute_reference(architecture)
    model = build_architecture(architecture, len(class_names))
    given = {
        "input_size": input_size,
        "mean": mean,
        "std": std,
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "interpolation": interpolation,
    }
    framing, mean, std = choose_preprocessing(architecture, model, given)
    if (problem := normalisation_problem(mean, std)) is not None:
        raise UsageError(f"The input {problem}; got mean {mean} and std {std}.")
    state = load_state_dict(Path(weights), trust_pickle=trust_pickle)
    refuse_non_finite(state, Path(weights))
    load_weights(model, state, Path(weights), architecture)
    model.eval()
    check_input(model, len(mean), framing.size, f"Architecture {architecture!r}")
    example = torch.zeros(2, len(mean), *framing.size)
    with torch.no_grad():
        outputs = model(example).shape[-1]
    if outputs != len(class_names):
        raise UsageError(f"The model predicts {outputs} classes but {len(class_names)} class names were given.")
    layers = list(feature_layers) or default_feature_layers(model, example)
    if not layers:
        raise UsageError("Could not find feature layers; name them with --feature-layers.")

    def clean() -> Iterator[Batch]:
        return source_batches(source_data, framing, class_names, mean, std, num_images, batch_size)

    stats = measure_source_stats(model, layers, clean())
    typicality = measure_typicality(model, (batch.images for batch in clean()))
    if typicality is not None:
        stats |= typicality.tensors()
    if (statistic := first_non_finite(stats)) is not None:
        raise UsageError(
            f"The model's {statistic!r} on the clean images of {source_data} is not finite; check its weights and "
            "that --mean and --std match how it was trained."
        )
    spec = ModelSpec(
        name=name or out.name,
        architecture=architecture,
        class_names=list(class_names),
        input_size=framing.size,
        crop_pct=framing.crop_pct,
        crop_mode=framing.crop_mode,
        interpolation=framing.interpolation,
        mean=mean,
        std=std,
        feature_layers=layers,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    # The whole bundle appears at once: a killed prepare leaves no half of one.
    weights_bytes = save({key: value.contiguous() for key, value in model.state_dict().items()})
    with atomic_folder(out) as staging:
        (staging / WEIGHTS_FILE).write_bytes(weights_bytes)
        (staging / SOURCE_STATS_FILE).write_bytes(save(stats))
        (staging / MODEL_FILE).write_text(tomli_w.dumps(spec.model_dump(mode="json")))
    # The user named the file, so the bundle may run it here (``tta_cli.models.trust``).
    if (file := code_file(architecture)) is not None:
        trust(file)
    return spec


def choose_preprocessing(
    architecture: str, model: nn.Module, given: Mapping[str, Any]
) -> tuple[Framing, tuple[float, ...], tuple[float, ...]]:
    """The framing, mean and std of a new bundle: each setting ``given`` (``None`` for not given),
    else the hub's pretrained one, else ``ModelSpec``'s default; mean and std have no default."""
    chosen = {
        **FRAMING_DEFAULTS,
        **pretrained_preprocessing(architecture, model),
        **{key: value for key, value in given.items() if value is not None},
    }
    if "mean" not in chosen or "std" not in chosen:
        raise UsageError(
            f"Give --mean and --std for architecture {architecture!r}; only timm:NAME and torchvision:NAME "
            "architectures bring their own."
        )
    mean, std = tuple(chosen["mean"]), tuple(chosen["std"])
    if len(mean) not in CHANNELS or len(std) != len(mean):
        raise UsageError(f"Give one --mean and --std value per input channel (1 or 3), got {len(mean)} and {len(std)}.")
    try:
        framing = Framing(chosen["input_size"], chosen["crop_pct"], chosen["crop_mode"], chosen["interpolation"])
    except ValueError as error:
        raise UsageError(str(error)) from error
    return framing, mean, std


@torch.no_grad()
def source_batches(
    source_data: Path,
    framing: Framing,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    num_images: int,
    batch_size: int,
) -> Iterator[Batch]:
    """The clean images ``prepare`` measures on: up to ``num_images`` of ``source_data``,
    shuffled with seed 0 (spread over the whole folder), framed and normalised as the bundle says."""
    stream = FolderStream(source_data, framing, class_names, order="shuffled", seed=0, limit=num_images)
    return batches(stream, batch_size, Preprocess(mean, std))


def measure_source_stats(
    model: torch.nn.Module, layers: Sequence[str], source_batches: Iterable[Batch]
) -> dict[str, torch.Tensor]:
    """Per layer, the mean and std over all images of the pooled features, accumulated in
    float64 in one pass."""
    sums: dict[str, torch.Tensor] = {}
    squares: dict[str, torch.Tensor] = {}
    count = 0
    with record_features(model, layers) as features:
        for batch in source_batches:
            model(batch.images)
            count += len(batch)
            for layer in layers:
                values = features[layer].double()
                sums[layer] = sums.get(layer, 0) + values.sum(0)
                squares[layer] = squares.get(layer, 0) + (values**2).sum(0)
    if count < 2:
        raise UsageError("Measuring source statistics needs at least two readable images.")
    stats = {}
    for layer in layers:
        mean = sums[layer] / count
        variance = (squares[layer] - count * mean**2) / (count - 1)
        stats[f"{layer}.mean"] = mean.float()
        stats[f"{layer}.std"] = variance.clamp_min(0).sqrt().float()
    return stats
