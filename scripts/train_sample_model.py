"""Train a CIFAR-10 source model (the ``airnet`` family, or ``resnet20``) and write its weights and ``training.json``.

    python scripts/train_sample_model.py --data CIFAR10_DIR --out OUT --epochs 10 --seed 0 \
        [--architecture airnet|airnet_gn|airnet_ln|airnet_gray|resnet20] [--label-smoothing 0.2]

The recipe is ``tta_cli.training.source_model.train``; ``CIFAR10_DIR`` holds ``train/<class>/``
and ``test/<class>/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tta_cli.engine.device import resolve_device
from tta_cli.training.source_model import train


def main(
    data: Annotated[Path, typer.Option(help="Folder with train/ and test/ class sub-folders.")],
    out: Annotated[Path, typer.Option(help="Folder for weights.safetensors and training.json.")],
    epochs: Annotated[float, typer.Option(help="Passes over the training split.")] = 10.0,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 1024,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, order and augmentation.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    label_smoothing: Annotated[
        float, typer.Option(help="0: plain cross-entropy, as benchmark models are trained (the shipped airnet: 0.2).")
    ] = 0.0,
    architecture: Annotated[
        str,
        typer.Option(
            help="airnet, airnet_gn (GroupNorm only), airnet_ln (LayerNorm only), airnet_gray (one input channel) "
            "or resnet20."
        ),
    ] = "airnet",
) -> None:
    """Train a CIFAR-10 source model of the airnet family, or a ResNet-20."""
    report = train(data, out, epochs, batch_size, seed, str(resolve_device(device)), label_smoothing, architecture)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
