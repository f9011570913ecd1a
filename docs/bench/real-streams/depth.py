"""Which BatchNorm layers should follow the test batch: test-batch statistics in the first k
layers, the source's in the rest, for k = 0 … all, forward passes only, each corruption from the
source model (600 images, severity 5), shuffled at batch 200 and sorted by class at batch 64.

    python docs/bench/real-streams/depth.py CIFAR10_DIR [BUNDLE]   (from the repository root)

BUNDLE defaults to sample_models/cifar10-airnet-ce; the figures in docs/benchmarks.md were measured
on the former sample, sample_models/cifar10-airnet, no longer shipped.

Prints one line per order and k: the mean error (%) and the error per corruption.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tta_cli.bench.streams import build_streams
from tta_cli.corruptions import CORRUPTIONS
from tta_cli.models import load_bundle
from tta_cli.streams import Preprocess


def main(data: Path, bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    model = bundle.model.eval()
    layers = [layer for layer in model.modules() if isinstance(layer, _BatchNorm)]
    preprocess = Preprocess(bundle.spec.mean, bundle.spec.std)
    streams = build_streams(
        data / "test", bundle.spec.class_names, CORRUPTIONS, 5, bundle.spec.input_size, num_examples=600, seed=0
    )
    for order, batch_size in (("shuffled", 200), ("sorted", 64)):
        for k in range(len(layers) + 1):
            for index, layer in enumerate(layers):
                layer.train(index < k)
                layer.momentum = 0.0  # normalise with the batch's statistics, keep the source's
            errors = []
            for stream in streams:
                played = stream.reordered(order, seed=0)
                wrong = 0
                with torch.no_grad():
                    for start in range(0, len(played), batch_size):
                        logits = model(preprocess(played.images[start : start + batch_size]))
                        wrong += int(
                            (logits.argmax(1) != torch.from_numpy(played.labels[start : start + batch_size])).sum()
                        )
                errors.append(100 * wrong / len(played))
            print(f"{order} b{batch_size} k={k}: {np.mean(errors):.1f} |", " ".join(f"{e:.1f}" for e in errors))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "sample_models/cifar10-airnet-ce"))
