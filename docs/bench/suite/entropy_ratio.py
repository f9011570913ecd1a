"""How much normalising with a batch's own statistics raises the mean prediction entropy over the
source's statistics (the ratio ``return_on_confidence`` compares with ``confidence_ratio``), at
full strength: for batches of 64 clean training images of one class (what the default must not
normalise away), clean shuffled batches, and shuffled batches of each corruption at severity 1,
3 and 5 (the largest ratio of a corruption's three batches), per bundle (docs/benchmarks.md,
"What the suite says"): whether a ``confidence_ratio`` measured on the model's own clean images
could replace the constant.

    python docs/bench/suite/entropy_ratio.py CIFAR10_DIR/test sample_models/cifar10-resnet20-ce ...
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch

from tta_cli.bench.streams import build_streams
from tta_cli.corruptions import CORRUPTIONS
from tta_cli.engine.norms import use_norm
from tta_cli.models import Bundle, load_bundle
from tta_cli.objectives.entropy import entropy
from tta_cli.streams.batching import Preprocess
from tta_cli.streams.decode import decode_image
from tta_cli.streams.folder import labeled_images

BATCH = 64


def ratio(bundle: Bundle, x: torch.Tensor) -> float:
    """Mean entropy with the batch's statistics over that with the source's."""
    model = bundle.model
    # Normalising with the batch's statistics in train mode moves the running statistics too.
    source_state = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        use_norm(model, None)
        source = entropy(model(x)).mean()
        use_norm(model, "batch")
        own = entropy(model(x)).mean()
    use_norm(model, None)
    model.load_state_dict(source_state)
    return float(own / source)


def main(data: Path, bundles: list[Path]) -> None:
    for path in bundles:
        bundle = load_bundle(path)
        spec = bundle.spec
        preprocess = Preprocess(spec.mean, spec.std)
        labeled = labeled_images(data.parent / "train", spec.class_names, "*/*")
        rng = np.random.default_rng(0)
        one_class = []
        for label in range(spec.num_classes):
            paths = [image for image, known in labeled if known == label]
            chosen = rng.choice(len(paths), BATCH, replace=False)
            one_class.append(
                ratio(bundle, preprocess(np.stack([decode_image(paths[i], spec.framing) for i in chosen])))
            )
        chosen = rng.choice(len(labeled), 4 * BATCH, replace=False)
        images = np.stack([decode_image(labeled[index][0], spec.framing) for index in chosen])
        shuffled = [ratio(bundle, preprocess(images[start : start + BATCH])) for start in range(0, len(images), BATCH)]
        print(f"\n## {spec.name}\n")
        print(f"- clean, one class: {min(one_class):.2f}-{max(one_class):.2f} (median {np.median(one_class):.2f})")
        print(f"- clean, shuffled: {min(shuffled):.2f}-{max(shuffled):.2f}")
        for severity in (1, 3, 5):
            largest = []
            for shifted in build_streams(data, spec.class_names, CORRUPTIONS, severity, spec.framing, 200, 0):
                images = shifted.reordered("shuffled", 0).images
                batches = range(0, len(images) - BATCH + 1, BATCH)
                largest.append(max(ratio(bundle, preprocess(images[start : start + BATCH])) for start in batches))
            print(f"- severity {severity}, shuffled, per corruption: " + " ".join(f"{value:.2f}" for value in largest))


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(arg) for arg in sys.argv[2:]])
