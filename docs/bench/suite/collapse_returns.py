"""What the default's weighted norm decides, batch by batch, on one stream: a shift of the test
images (shuffled, 200 images) or ``class:NAME``, one clean class alone (its first 500 test
images in file order, as ``one_scene.py`` plays them). Per batch: the first layer's divergence
from the source's statistics, the median image's typicality score (``tta_cli.models.typicality``),
the decisions, the mean prediction entropy with the statistics in use and with the source's, and
the share of the batch each predicts as its most frequent class and as the true one
(docs/benchmarks.md, "What the suite says"). ``former`` runs without the bundle's typicality, as
a bundle prepared before it.

    python docs/bench/suite/collapse_returns.py sample_models/cifar10-resnet20-ce CIFAR10_DIR/test \
      extreme_noise|class:bird [former]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tta_cli.bench.protocols import bench_method, run_method
from tta_cli.bench.streams import ShiftedStream, build_streams
from tta_cli.engine.norms.base import Prediction
from tta_cli.engine.norms.weighted import WeightedNorm
from tta_cli.models import Bundle, load_bundle
from tta_cli.objectives.entropy import entropy

sys.path.insert(0, str(Path(__file__).parent))
from one_scene import CLASS_IMAGES, class_paths, stream


def majority(logits: torch.Tensor) -> float:
    return float(torch.bincount(logits.argmax(dim=1)).max()) / len(logits)


def streams_of(bundle: Bundle, data: Path, shift: str) -> list[ShiftedStream]:
    spec = bundle.spec
    if shift.startswith("class:"):
        label = spec.class_names.index(shift.removeprefix("class:"))
        return [stream(shift, class_paths(data, spec.class_names)[label][:CLASS_IMAGES], label, spec.framing)]
    built = build_streams(data, spec.class_names, [shift], 5, spec.framing, 200, 0, None)
    return [built_stream.reordered("shuffled", 0) for built_stream in built]


def main(bundle_path: Path, data: Path, shift: str, former: bool) -> None:
    bundle = load_bundle(bundle_path)
    limit = "-" if bundle.typicality is None else f"{bundle.typicality.limit:.2f}"
    if former:
        bundle.typicality = None
    streams = streams_of(bundle, data, shift)
    labels = torch.from_numpy(streams[0].labels)
    seen = 0
    second_look = WeightedNorm.second_look

    def recorded(self: WeightedNorm, look_again, logits: torch.Tensor) -> Prediction:  # type: ignore[no-untyped-def]
        nonlocal seen
        prediction = second_look(self, look_again, logits)
        truth = labels[seen : seen + len(logits)]
        seen += len(logits)
        source_logits = prediction.source_logits
        score = "-" if self.typicality is None else f"{float(self.typicality.scores(self.moments).median()):.2f}"
        columns = [f"{self.source_divergence:.3f}", score, str(self.jumped), self.returned or "-", str(self.deferring)]
        for values in (logits, source_logits):
            if values is None:
                columns += ["-", "-", "-"]
                continue
            right = float((values.argmax(dim=1) == truth).float().mean())
            columns += [f"{float(entropy(values).mean()):.2f}", f"{majority(values):.2f}", f"{right:.2f}"]
        print(f"| {' | '.join(columns)} |")
        return prediction

    WeightedNorm.second_look = recorded  # type: ignore[method-assign]
    print(
        f"| divergence from the source | typicality score (limit {limit}) | jump | return | deferring "
        "| entropy, in use | one class, in use | right, in use | entropy, source | one class, source | right, source |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = run_method(bundle, bench_method("auto", bundle), streams, "continual", 64, torch.device("cpu"))
    print(f"\nerror {results[0].error_percent:.1f} %")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:] == ["former"])
