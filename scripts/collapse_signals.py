"""What tells a genuine one-class stream from a collapse, measured per batch on a bundle.

For each stream (every class of a clean labeled folder alone; the shifts beyond CIFAR-10-C and
some benchmark corruptions, classes mixed) and its first batches, writes per batch:

- ``feature_divergence``: how far the batch's pooled features at the bundle's first feature
  layer lie from the clean source's (``source_stats.safetensors``): the mean over channels of
  the Kullback–Leibler divergence between per-channel Gaussians, as the "weighted"
  normalisation measures it (``gaussian_divergence``: 0.5 for a shift of the mean by one
  standard deviation). Every bundle has
  these statistics, BatchNorm or not.
- ``input_divergence`` (BatchNorm models): the same between the batch's statistics at the
  input of the first BatchNorm layer and that layer's running statistics.
- for the source model and for test-batch normalisation (where the model has BatchNorm): the
  majority class's share of the batch's predictions, the mean entropy, and the accuracy.

    python scripts/collapse_signals.py --model BUNDLE --data CIFAR10_DIR/test --out signals.json
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from tta_cli.corruptions import BEYOND, corrupt, image_rng
from tta_cli.engine.norms import use_norm
from tta_cli.engine.norms.layers import batch_norm_layers, gaussian_divergence
from tta_cli.models import load_bundle
from tta_cli.models.features import record_features
from tta_cli.objectives import entropy
from tta_cli.streams import Preprocess, labeled_images
from tta_cli.streams.decode import decode_image

CORRUPTIONS = ("gaussian_noise", "defocus_blur", "fog", "contrast", "brightness")


def describe(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    predictions = logits.argmax(dim=1)
    share = torch.bincount(predictions).max().item() / len(predictions)
    return {
        "majority": round(share, 4),
        "entropy": round(float(entropy(logits).mean()), 4),
        "accuracy": round(float((predictions == labels).float().mean()), 4),
    }


def main(
    model: Annotated[Path, typer.Option(help="Model bundle.")],
    data: Annotated[Path, typer.Option(help="Clean labeled folder (<class>/<image>), e.g. CIFAR-10's test split.")],
    out: Annotated[Path, typer.Option(help="JSON file to write.")],
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    batches: Annotated[int, typer.Option(help="Batches per stream.")] = 4,
    severity: Annotated[int, typer.Option(help="Severity of the benchmark corruptions.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the image choice and the corruptions.")] = 0,
) -> None:
    """Measure, per batch, what the source, test-batch normalisation and the features say."""
    bundle = load_bundle(model)
    spec = bundle.spec
    layer = spec.feature_layers[0]
    source_mean, source_std = bundle.source_stats[layer]
    preprocess = Preprocess(spec.mean, spec.std)
    rng = np.random.default_rng(seed)
    files = [
        (path, label) for path, label in labeled_images(data, spec.class_names, pattern="*/*") if label is not None
    ]
    per_class: dict[int, list[Path]] = {}
    for path, label in files:
        per_class.setdefault(label, []).append(path)
    count = batch_size * batches
    mixed = [files[index] for index in rng.permutation(len(files))[:count]]
    streams: dict[str, tuple[str | None, list[tuple[Path, int]]]] = {
        f"one class: {spec.class_names[label]}": (None, [(path, label) for path in paths[:count]])
        for label, paths in sorted(per_class.items())
    }
    streams |= {f"mixed: {name}": (name, mixed) for name in (*BEYOND, *CORRUPTIONS)}
    normalising = copy.deepcopy(bundle.model)
    norms = batch_norm_layers(bundle.model)
    first_norm = norms[0] if norms else None
    use_norm(normalising, "batch" if norms else None)
    first_inputs: list[torch.Tensor] = []
    if first_norm is not None:
        first_norm.register_forward_pre_hook(lambda _, inputs: first_inputs.append(inputs[0]))
    results: list[dict[str, Any]] = []
    for stream, (corruption, chosen) in streams.items():
        for start in range(0, len(chosen), batch_size):
            part = chosen[start : start + batch_size]
            pixels = []
            for path, _ in part:
                image = decode_image(path, spec.framing)
                if corruption is not None:
                    image = corrupt(
                        image, corruption, severity, image_rng(seed, corruption, severity, path.relative_to(data))
                    )
                pixels.append(image)
            images = preprocess(np.stack(pixels))
            labels = torch.tensor([label for _, label in part])
            first_inputs.clear()
            with torch.no_grad(), record_features(bundle.model, [layer]) as features:
                source_logits = bundle.model(images)
                pooled = features[layer]
            row = {
                "stream": stream,
                "batch": start // batch_size,
                "feature_divergence": round(
                    gaussian_divergence(pooled.mean(0), pooled.var(0), source_mean, source_std.square()), 4
                ),
                "source": describe(source_logits, labels),
            }
            if first_norm is not None:
                x = first_inputs[0]
                var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], unbiased=False)
                running_mean, running_var = first_norm.running_mean, first_norm.running_var
                assert running_mean is not None and running_var is not None, "a BatchNorm layer without statistics"
                row["input_divergence"] = round(gaussian_divergence(mean, var, running_mean, running_var), 4)
                with torch.no_grad():
                    row["norm"] = describe(normalising(images), labels)
            results.append(row)
            typer.echo(json.dumps(row))
    out.write_text(json.dumps({"model": str(model), "layer": layer, "severity": severity, "rows": results}, indent=1))


if __name__ == "__main__":
    typer.run(main)
