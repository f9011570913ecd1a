"""The low-level features that ``--domain-weighting`` clusters on, per corruption, and the
clusters it forms on their mix (``tta_cli.engine.domains``).

    python scripts/domain_features.py --model BUNDLE --data CIFAR10_DIR/test > features.md

Prints, per corruption at the given severity, each feature's mean ± standard deviation over the
images, then for the mix of every corruption fed in batches as ``adapt`` would: each cluster's
size and its images by corruption (the clusters' purity).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from tta_cli.bench.protocols import mix
from tta_cli.bench.streams import build_streams
from tta_cli.corruptions import CORRUPTIONS
from tta_cli.engine.domains import DomainClusters, low_level_features
from tta_cli.models import load_bundle
from tta_cli.streams import Preprocess

NAMES = ("exposure", "log contrast", "log sharpness / contrast", "log finest detail")


def main(
    model: Annotated[Path, typer.Option(help="Model bundle (for its input size and normalisation).")],
    data: Annotated[Path, typer.Option(help="Labeled clean folder to corrupt.")],
    corruptions: Annotated[str, typer.Option(help="Comma-separated.")] = ",".join(CORRUPTIONS),
    severity: Annotated[int, typer.Option()] = 5,
    num_examples: Annotated[int, typer.Option(help="Images per corruption.")] = 300,
    batch_size: Annotated[int, typer.Option()] = 64,
    cache_dir: Annotated[Path | None, typer.Option()] = None,
) -> None:
    bundle = load_bundle(model)
    spec = bundle.spec
    names = corruptions.split(",")
    streams = build_streams(data, spec.class_names, names, severity, spec.framing, num_examples, 0, cache_dir)
    preprocess = Preprocess(spec.mean, spec.std)
    print(f"# Low-level features, severity {severity}, {num_examples} images each\n")
    print("| corruption | " + " | ".join(NAMES) + " |")
    print("|---" * (len(NAMES) + 1) + "|")
    for stream in streams:
        features = low_level_features(preprocess(stream.images))
        cells = [f"{mean:.2f} ± {std:.2f}" for mean, std in zip(features.mean(0), features.std(0), strict=True)]
        print(f"| {stream.corruption} | " + " | ".join(cells) + " |")
    mixed = mix(streams, 0)
    clusters = DomainClusters()
    assigned: list[int] = []
    for start in range(0, len(mixed), batch_size):
        assigned += clusters.assign(preprocess(mixed.images[start : start + batch_size])).tolist()
    assert mixed.domains is not None
    print(f"\n# Clusters of the mix, batches of {batch_size}\n")
    print("| cluster | images | by corruption |\n|---|---|---|")
    for cluster in range(clusters.size):
        members = Counter(d for d, c in zip(mixed.domains, assigned, strict=True) if c == cluster)
        shares = ", ".join(f"{name} {count}" for name, count in members.most_common())
        print(f"| {cluster + 1} | {sum(members.values())} | {shares} |")


if __name__ == "__main__":
    typer.run(main)
