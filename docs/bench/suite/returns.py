"""Why θ returns to the source on a model without BatchNorm (docs/benchmarks.md, "What the suite
says"): for each corruption at severity 1, 3 and 5 and the shifts beyond them, the median image's
typicality score of the three batches of 64 of a shuffled 200-image stream (the bundle's
typicality, its limit in the heading); then the suite's shuffled stream at severity 1, batch 64,
batch by batch: the source's errors and the default's with and without the return, and when it
returned.

    python docs/bench/suite/returns.py CIFAR10_DIR/test sample_models/cifar10-airnet_gn-ce
"""

from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

import torch

from tta_cli.bench.protocols import bench_method, run_method
from tta_cli.bench.streams import ShiftedStream, build_streams
from tta_cli.corruptions import BEYOND, CORRUPTIONS
from tta_cli.engine.adapter import Adapter, StepResult
from tta_cli.engine.methods import Method
from tta_cli.events import EventKind
from tta_cli.models import Bundle, load_bundle
from tta_cli.models.typicality import recorded_moments, shallow_layers
from tta_cli.streams import Batch
from tta_cli.streams.batching import Preprocess

BATCH = 64
IMAGES = 200


def scores(bundle: Bundle, data: Path) -> None:
    assert bundle.typicality is not None, "add it with scripts/add_typicality.py"
    preprocess = Preprocess(bundle.spec.mean, bundle.spec.std)
    print(f"## Median image's typicality score per batch (limit {bundle.typicality.limit:.2f})\n")
    print("| shift | corruption | batches |")
    print("|---|---|---|")
    for severity, names in ((1, CORRUPTIONS), (3, CORRUPTIONS), (5, CORRUPTIONS), (5, BEYOND)):
        for stream in build_streams(data, bundle.spec.class_names, names, severity, bundle.spec.framing, IMAGES, 0):
            images = stream.reordered("shuffled", 0).images
            medians = []
            for start in range(0, len(images) - BATCH + 1, BATCH):
                with torch.no_grad(), recorded_moments(shallow_layers(bundle.model)) as moments:
                    bundle.model(preprocess(images[start : start + BATCH]))
                medians.append(f"{float(bundle.typicality.scores(moments).median()):.2f}")
            shift = f"severity {severity}" if names is CORRUPTIONS else "beyond"
            print(f"| {shift} | {stream.corruption} | {' / '.join(medians)} |")


Row = tuple[str, int, int, bool]
"""Per batch: its corruption, the source's errors, the default's, and whether θ returned."""


def logged_run(bundle: Bundle, method: Method, streams: list[ShiftedStream], source: torch.nn.Module) -> list[Row]:
    rows: list[Row] = []
    corruption = [""]
    step = Adapter.step

    def logged(adapter: Adapter, batch: Batch) -> StepResult:
        with torch.no_grad():
            source_errors = int((source(batch.images).argmax(dim=1) != batch.labels).sum())
        result = step(adapter, batch)
        returned = any(event.kind is EventKind.RESET for event in result.events)
        rows.append((corruption[0], source_errors, int((result.predictions != batch.labels).sum()), returned))
        return result

    def starts(name: str, adapter: Adapter) -> None:
        corruption[0] = name

    Adapter.step = logged  # type: ignore[method-assign,assignment]
    try:
        torch.manual_seed(0)
        run_method(bundle, method, streams, "continual", BATCH, torch.device("cpu"), on_corruption_start=starts)
    finally:
        Adapter.step = step  # type: ignore[method-assign,assignment]
    return rows


def batch_by_batch(bundle: Bundle, data: Path) -> None:
    streams = [
        stream.reordered("shuffled", 0)
        for stream in build_streams(data, bundle.spec.class_names, CORRUPTIONS, 1, bundle.spec.framing, IMAGES, 0)
    ]
    source = copy.deepcopy(bundle.model).eval()  # run_method adapts bundle.model
    default = bench_method("auto", bundle)
    with_return = logged_run(bundle, default, streams, source)
    without = logged_run(bundle, replace(default, return_to_source=False), streams, source)
    print("\n## Shuffled, batch 64, severity 1: errors per batch\n")
    print("| corruption | source | default without the return | default | returned |")
    print("|---|---|---|---|---|")
    for (corruption, source_errors, errors, returned), (_, _, errors_without, _) in zip(
        with_return, without, strict=True
    ):
        print(f"| {corruption} | {source_errors} | {errors_without} | {errors} | {'yes' if returned else ''} |")


def main(data: Path, path: Path) -> None:
    bundle = load_bundle(path)
    print(f"# θ's return to the source: {bundle.spec.name}\n")
    scores(bundle, data)
    batch_by_batch(bundle, data)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
