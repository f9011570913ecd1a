"""A camera on one scene, and on one class, against a collapse: does the default keep the
source's predictions where the stream is the source's domain, with the bundle's typicality
(``tta_cli.models.typicality``) and with the batch-statistics rule it replaced
(docs/benchmarks.md, "What the suite says")?

Per bundle, online accuracy (%) of the source and of the default (``auto``, guarded as
``tta-cli adapt`` runs it), each stream on its own (reset between streams), batch 64:
- one class: each CIFAR-10 test class alone, clean, its first 500 images in file order;
- one scene: 30 test images (3 per class, seeded), each as 256 frames of a still camera
  (``video_frames``: moved by up to a pixel, sensor noise).

    python docs/bench/suite/one_scene.py CIFAR10_DIR/test sample_models/cifar10-airnet-ce ...

With ``--without SWITCH`` (a switch of ``WeightedNormConfig``) the last column is the default
with that mechanism off instead of the former rule.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from tta_cli.bench.orders import video_frames
from tta_cli.bench.protocols import bench_method, run_method
from tta_cli.bench.streams import ShiftedStream
from tta_cli.config import WeightedNormConfig
from tta_cli.models import load_bundle
from tta_cli.streams.decode import decode_image
from tta_cli.streams.folder import labeled_images

CLASS_IMAGES = 500
SCENES_PER_CLASS = 3
FRAMES = 256
BATCH = 64


def stream(name: str, paths: list[Path], label: int, framing, frames: int = 1) -> ShiftedStream:  # type: ignore[no-untyped-def]
    images = np.stack([decode_image(path, framing) for path in paths])
    if frames > 1:
        images = video_frames(np.repeat(images, frames, axis=0), np.random.default_rng(label))
    ids = [f"{name}#{index}" for index in range(len(images))]
    return ShiftedStream(name, 0, paths[0].parent, ids, images, np.full(len(images), label))


def class_paths(data: Path, class_names: list[str]) -> list[list[Path]]:
    """Each class's test images, in file order."""
    labeled = labeled_images(data, class_names, "*/*")
    return [sorted(path for path, label in labeled if label == index) for index in range(len(class_names))]


def accuracy(  # type: ignore[no-untyped-def]
    bundle, name: str, streams: list[ShiftedStream], weighted_norm: WeightedNormConfig | None = None
) -> np.ndarray:
    torch.manual_seed(0)
    method = bench_method(name, bundle)
    results = run_method(bundle, method, streams, "reset", BATCH, torch.device("cpu"), weighted_norm=weighted_norm)
    return np.array([100 - result.error_percent for result in results])


def main(data: Path, bundles: list[Path], without: str | None = None) -> None:
    other = f"default without {without}" if without else "default, first-layer divergence (former)"
    print(f"| bundle | streams | source | default, typicality | {other} |")
    print("|---|---|---|---|---|")
    for path in bundles:
        bundle = load_bundle(path)
        spec = bundle.spec
        by_class = class_paths(data, spec.class_names)
        rng = np.random.default_rng(0)
        classes = [
            stream(spec.class_names[index], paths[:CLASS_IMAGES], index, spec.framing)
            for index, paths in enumerate(by_class)
        ]
        scenes = [
            stream(f"scene-{path.stem}", [path], index, spec.framing, FRAMES)
            for index, paths in enumerate(by_class)
            for path in (paths[i] for i in rng.choice(len(paths), SCENES_PER_CLASS, replace=False))
        ]
        typicality = bundle.typicality
        for kind, streams in (("one class", classes), ("one scene", scenes)):
            source = accuracy(bundle, "source", streams)
            bundle.typicality = typicality
            measured = accuracy(bundle, "auto", streams)
            if without:
                former = accuracy(bundle, "auto", streams, WeightedNormConfig(**{without: False}))
            else:
                bundle.typicality = None
                former = accuracy(bundle, "auto", streams)
                bundle.typicality = typicality
            cells = [
                f"{values.mean():.1f} (below source: {int((values < source - 1e-9).sum())}, "
                f"worst {np.min(values - source):+.1f})"
                for values in (measured, former)
            ]
            print(f"| {spec.name} | {kind} ({len(streams)}) | {source.mean():.1f} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    switch = None
    if "--without" in arguments:
        at = arguments.index("--without")
        switch = arguments[at + 1]
        del arguments[at : at + 2]
    main(Path(arguments[0]), [Path(arg) for arg in arguments[1:]], switch)
