"""How far a batch's statistics at each BatchNorm layer lie from the source's, for clean batches
of one class (a camera on one scene), clean shuffled batches, the 15 corruptions at severity 1,
3 and 5 and the shifts beyond them (docs/benchmarks.md, "What the suite says"): whether a notion
of "near the source" measured on the model's own clean batches tells a one-class stream from a
shift, on every bundle.

    python docs/bench/suite/near_source.py CIFAR10_DIR/test sample_models/cifar10-airnet-ce ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tta_cli.bench.streams import build_streams
from tta_cli.corruptions import BEYOND, CORRUPTIONS
from tta_cli.engine.norms.layers import gaussian_divergence, reduced_dims
from tta_cli.models import load_bundle
from tta_cli.streams.batching import Preprocess
from tta_cli.streams.decode import decode_image
from tta_cli.streams.folder import labeled_images

BATCH = 64
IMAGES = 200


def divergences(model: torch.nn.Module, layers: list[_BatchNorm], x: torch.Tensor) -> list[float]:
    """Each layer's divergence of the batch's statistics from its running (source) statistics."""
    found: list[float] = []

    def hook(layer: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        var, mean = torch.var_mean(inputs[0], dim=reduced_dims(inputs[0]), unbiased=False)
        found.append(gaussian_divergence(mean, var, layer.running_mean, layer.running_var))

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    with torch.no_grad():
        logits = model(x)
    for handle in handles:
        handle.remove()
    majority = float(torch.bincount(logits.argmax(dim=1)).max()) / len(x)
    return [*found, majority]


def main(data: Path, bundles: list[Path]) -> None:
    for path in bundles:
        bundle = load_bundle(path)
        spec, model = bundle.spec, bundle.model
        layers = [module for module in model.modules() if isinstance(module, _BatchNorm)]
        preprocess = Preprocess(spec.mean, spec.std)
        labeled = labeled_images(data, spec.class_names, "*/*")
        rng = np.random.default_rng(0)
        rows: dict[str, list[list[float]]] = {}
        for label in range(spec.num_classes):
            paths = [p for p, y in labeled if y == label]
            chosen = rng.choice(len(paths), BATCH, replace=False)
            images = np.stack([decode_image(paths[i], spec.framing) for i in chosen])
            rows.setdefault("clean, one class", []).append(divergences(model, layers, preprocess(images)))
        chosen = rng.choice(len(labeled), 4 * BATCH, replace=False)
        images = np.stack([decode_image(labeled[i][0], spec.framing) for i in chosen])
        for start in range(0, len(images), BATCH):
            batch = preprocess(images[start : start + BATCH])
            rows.setdefault("clean, shuffled", []).append(divergences(model, layers, batch))
        for severity, names in ((1, CORRUPTIONS), (3, CORRUPTIONS), (5, CORRUPTIONS), (5, BEYOND)):
            streams = build_streams(data, spec.class_names, names, severity, spec.framing, IMAGES, 0)
            for stream in streams:
                key = stream.corruption if names is BEYOND else f"severity {severity}"
                images = stream.reordered("shuffled", 0).images
                for start in range(0, len(images) - BATCH + 1, BATCH):
                    batch = preprocess(images[start : start + BATCH])
                    rows.setdefault(key, []).append(divergences(model, layers, batch))
        print(f"\n## {spec.name} ({len(layers)} BatchNorm layers)\n")
        print("| batches | first layer: min / median / max | shallow half, mean: min / median / max | one class |")
        print("|---|---|---|---|")
        shallow = (len(layers) + 1) // 2
        for key, values in rows.items():
            table = np.array(values)
            first, half = table[:, 0], table[:, :shallow].mean(axis=1)
            print(
                f"| {key} | {first.min():.3f} / {np.median(first):.3f} / {first.max():.3f} "
                f"| {half.min():.3f} / {np.median(half):.3f} / {half.max():.3f} | {np.median(table[:, -1]):.2f} |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(arg) for arg in sys.argv[2:]])
