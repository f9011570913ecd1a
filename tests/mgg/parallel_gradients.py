"""The test-time losses, the cross-entropy and their gradients over θ for a few global batches,
in float64: ``test_parallel.py`` computes them in one process and runs this file under
``torchrun`` to have two processes compute them from their shares of the same batches.

    torchrun --standalone --nproc_per_node 2 tests/mgg/parallel_gradients.py BUNDLE DATA OUT
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tta_cli.mgg.train import FunctionalModel
from tta_cli.models import load_bundle
from tta_cli.objectives import Entropy, FeatureAlignment
from tta_cli.parallel import Parallel, start_parallel
from tta_cli.streams import Batch, FolderStream, Preprocess, batches

SIZES = (6, 5, 1)
"""Global batches that two processes share equally, unequally, and with one share empty."""


def losses_and_gradients(bundle_path: Path, data: Path, parallel: Parallel) -> dict[str, torch.Tensor]:
    """``losses-B``: entropy, alignment and cross-entropy of the first B images at a θ off the
    source; ``gradients-B``: their ``(3, D)`` gradients over θ."""
    bundle = load_bundle(bundle_path)
    objectives = [Entropy(), FeatureAlignment(bundle.source_stats)]
    model = FunctionalModel(bundle.model.double(), bundle.spec.feature_layers, objectives, parallel)
    stream = FolderStream(data, bundle.spec.framing, bundle.spec.class_names)
    first = next(batches(stream, max(SIZES), Preprocess(bundle.spec.mean, bundle.spec.std)))
    noise = torch.randn(model.source.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta = (model.source + 0.1 * noise).requires_grad_(True)
    results = {}
    for size in SIZES:
        images, labels = first.images[:size].double(), first.labels[:size]
        logits, losses = model.losses(theta, Batch([], parallel.share(images), labels))
        every_loss = torch.cat([losses, F.cross_entropy(logits, labels).unsqueeze(0)])
        results[f"losses-{size}"] = every_loss.detach()
        results[f"gradients-{size}"] = model.gradients(every_loss, theta)
    model.close()
    return results


if __name__ == "__main__":
    bundle_path, data, out = (Path(argument) for argument in sys.argv[1:4])
    torch.set_num_threads(1)
    with contextlib.closing(start_parallel("cpu")) as parallel:
        results = losses_and_gradients(bundle_path, data, parallel)
    save_file(results, str(out / f"rank{parallel.rank}.safetensors"))
