"""Why the default returns to a collapsed source: each batch of a continual stream under one
shift, with the first layer's divergence from the source's statistics, the weighted norm's
decisions, and the share of the batch's predictions taken by one class with the statistics in
use and with the source's (docs/benchmarks.md, "What the suite says").

    python docs/bench/suite/collapse_returns.py sample_models/cifar10-resnet20-ce CIFAR10_DIR/test extreme_noise
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tta_cli.bench.protocols import bench_method, run_method
from tta_cli.bench.streams import build_streams
from tta_cli.engine.norms.base import Prediction
from tta_cli.engine.norms.weighted import WeightedNorm
from tta_cli.models import load_bundle


def majority(logits: torch.Tensor) -> float:
    return float(torch.bincount(logits.argmax(dim=1)).max()) / len(logits)


def main(bundle_path: Path, data: Path, shift: str) -> None:
    bundle = load_bundle(bundle_path)
    spec = bundle.spec
    streams = build_streams(data, spec.class_names, [shift], 5, spec.framing, 200, 0, None)
    streams = [stream.reordered("shuffled", 0) for stream in streams]
    second_look = WeightedNorm.second_look

    def recorded(self: WeightedNorm, look_again, logits: torch.Tensor) -> Prediction:  # type: ignore[no-untyped-def]
        prediction = second_look(self, look_again, logits)
        source = "-" if prediction.source_logits is None else f"{majority(prediction.source_logits):.2f}"
        print(
            f"| {self.source_divergence:.3f} | {self.jumped} | {self.returned or '-'} | {self.deferring} "
            f"| {majority(logits):.2f} | {source} |"
        )
        return prediction

    WeightedNorm.second_look = recorded  # type: ignore[method-assign]
    print("| divergence from the source | jump | return | deferring | one class, in use | one class, source |")
    print("|---|---|---|---|---|---|")
    results = run_method(bundle, bench_method("auto", bundle), streams, "continual", 64, torch.device("cpu"))
    print(f"\nerror {results[0].error_percent:.1f} %")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
