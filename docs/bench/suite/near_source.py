"""How far a batch lies from the source, by its statistics and by its images, for batches a
default must keep with the source's statistics (clean batches of one class, a camera on one
scene) and for shifts (each corruption at severity 5, the 15 at severity 1 and 3 together, the
shifts beyond them) (docs/benchmarks.md, "What the suite says"). Per kind of batch: the
divergence of its statistics from the source's (``gaussian_divergence``) at the first BatchNorm
layer and averaged over the shallow half, the median image's typicality score with the bundle's
typicality (``tta_cli.models.typicality``; its limit in the heading), and the share of the batch
the source predicts as one class; medians over batches of 64, first-layer minimum and maximum.

    python docs/bench/suite/near_source.py CIFAR10_DIR/test sample_models/cifar10-airnet-ce ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tta_cli.bench.orders import video_frames
from tta_cli.bench.streams import build_streams
from tta_cli.corruptions import BEYOND, CORRUPTIONS
from tta_cli.engine.norms.layers import gaussian_divergence, reduced_dims, running_stats
from tta_cli.models import Bundle, load_bundle
from tta_cli.models.typicality import recorded_moments, shallow_layers
from tta_cli.streams.batching import Preprocess
from tta_cli.streams.decode import decode_image
from tta_cli.streams.folder import labeled_images

BATCH = 64
IMAGES = 200
SCENES = 100
SCENE_FRAMES = 16


def measure(bundle: Bundle, x: torch.Tensor) -> list[float]:
    """The batch's divergence at every BatchNorm layer, its median typicality score, and the
    share of its most frequent predicted class, with the source's statistics."""
    model = bundle.model
    layers = [module for module in model.modules() if isinstance(module, _BatchNorm)]
    found: list[float] = []

    def hook(layer: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        var, mean = torch.var_mean(inputs[0], dim=reduced_dims(inputs[0]), unbiased=False)
        found.append(gaussian_divergence(mean, var, *running_stats(layer)))

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    with torch.no_grad(), recorded_moments(shallow_layers(model)) as moments:
        logits = model(x)
    for handle in handles:
        handle.remove()
    score = float(bundle.typicality.scores(moments).median()) if bundle.typicality is not None else float("nan")
    return [*found, score, float(torch.bincount(logits.argmax(dim=1)).max()) / len(x)]


def rows_of(bundle: Bundle, data: Path) -> dict[str, list[list[float]]]:
    spec = bundle.spec
    preprocess = Preprocess(spec.mean, spec.std)
    labeled = labeled_images(data, spec.class_names, "*/*")
    rng = np.random.default_rng(0)
    rows: dict[str, list[list[float]]] = {}
    for label in range(spec.num_classes):
        paths = [path for path, known in labeled if known == label]
        images = np.stack([decode_image(paths[index], spec.framing) for index in rng.choice(len(paths), BATCH, False)])
        rows.setdefault("clean, one class", []).append(measure(bundle, preprocess(images)))
    chosen = rng.choice(len(labeled), 4 * BATCH, replace=False)
    images = np.stack([decode_image(labeled[index][0], spec.framing) for index in chosen])
    for start in range(0, len(images), BATCH):
        rows.setdefault("clean, shuffled", []).append(measure(bundle, preprocess(images[start : start + BATCH])))
    for index in rng.choice(len(labeled), SCENES, replace=False):
        still = np.repeat(decode_image(labeled[index][0], spec.framing)[None], SCENE_FRAMES, axis=0)
        frames = video_frames(still, rng)
        rows.setdefault(f"one scene ({SCENE_FRAMES} frames)", []).append(measure(bundle, preprocess(frames)))
    for severity, names in ((5, CORRUPTIONS), (1, CORRUPTIONS), (3, CORRUPTIONS), (5, BEYOND)):
        for shifted in build_streams(data, spec.class_names, names, severity, spec.framing, IMAGES, 0):
            key = f"severity {severity}" if severity < 5 else shifted.corruption
            images = shifted.reordered("shuffled", 0).images
            for start in range(0, len(images) - BATCH + 1, BATCH):
                rows.setdefault(key, []).append(measure(bundle, preprocess(images[start : start + BATCH])))
    return rows


def main(data: Path, bundles: list[Path]) -> None:
    for path in bundles:
        bundle = load_bundle(path)
        shallow = len(shallow_layers(bundle.model))
        limit = "none" if bundle.typicality is None else f"{bundle.typicality.limit:.2f}"
        print(f"\n## {bundle.spec.name} (shallow half: {shallow} BatchNorm layers; typicality limit {limit})\n")
        print("| batches | first layer: min / median / max | shallow half, mean | typicality score | one class |")
        print("|---|---|---|---|---|")
        for key, values in rows_of(bundle, data).items():
            table = np.array(values)
            first, half = table[:, 0], table[:, :shallow].mean(axis=1)
            print(
                f"| {key} | {first.min():.3f} / {np.median(first):.3f} / {first.max():.3f} | {np.median(half):.3f} "
                f"| {np.median(table[:, -2]):.2f} | {np.median(table[:, -1]):.2f} |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(arg) for arg in sys.argv[2:]])
