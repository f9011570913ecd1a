"""The GroupNorm bundle's generators used at other step sizes α than they were trained for: does
the learned update want larger steps than α = 1e-2 allows (its output is bounded by tanh)?

    python docs/bench/mgtta/step-size/probe.py CIFAR10_DIR/test > docs/bench/mgtta/step-size/probe.md

The streams of docs/bench/mgtta/seeds (seed 0): 15 corruptions × 500 images, severity 5,
shuffled, batch 64; mean online error (%), reset and continual. It also reports the share of the
generator's outputs beyond 0.9 in magnitude (near the bound).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import tta_cli.engine.build as build
from tta_cli.bench.protocols import bench_method, run_method
from tta_cli.bench.streams import build_streams
from tta_cli.corruptions import CORRUPTIONS
from tta_cli.mgg.generator import MetaGradientGenerator
from tta_cli.mgg.rule import rule_for_bundle
from tta_cli.models import load_bundle

STEP_SIZES = (5e-3, 1e-2, 2e-2, 4e-2)


def main(data: Path) -> None:
    bundle = load_bundle(Path("sample_models/cifar10-airnet_gn-ce"))
    spec = bundle.spec
    streams = build_streams(data, spec.class_names, CORRUPTIONS, 5, spec.framing, 500, 0, None)
    streams = [stream.reordered("shuffled", 0) for stream in streams]
    outputs: list[torch.Tensor] = []
    forward = MetaGradientGenerator.forward

    def recorded(self, features, memory=None):  # type: ignore[no-untyped-def]
        direction, memory = forward(self, features, memory)
        outputs.append(direction.detach().abs().flatten())
        return direction, memory

    MetaGradientGenerator.forward = recorded  # type: ignore[method-assign]
    print("| method | α | reset | continual | outputs beyond 0.9 |")
    print("|---|---|---|---|---|")
    for name in ("mgtta", "mgtta-nomem"):
        for alpha in STEP_SIZES:
            build.rule_for_bundle = lambda bundle, params, file, lr, alpha=alpha: rule_for_bundle(
                bundle, params, file, alpha
            )
            errors = {}
            outputs.clear()
            for protocol in ("reset", "continual"):
                torch.manual_seed(0)
                results = run_method(bundle, bench_method(name, bundle), streams, protocol, 64, torch.device("cpu"))
                errors[protocol] = np.mean([result.error_percent for result in results])
            near = float((torch.cat(outputs) > 0.9).float().mean())
            print(
                f"| {name} | {alpha:g} | {errors['reset']:.2f} | {errors['continual']:.2f} | {near:.2f} |", flush=True
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
